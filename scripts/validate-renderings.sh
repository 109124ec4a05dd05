#!/usr/bin/env bash
# Validates what `choreo graph` and `choreo export asyncapi` produce, with the
# real tools rather than by eye:
#
#   - the AsyncAPI document of every topology in topologies/ against the
#     official AsyncAPI 3.0.0 JSON Schema (from the @asyncapi/specs package,
#     checked with Ajv), plus every local $ref resolving;
#   - the Mermaid flowchart of every topology (with and without --topics),
#     and of flows of the tracer's corpus (`choreo trace --flow ID --format
#     mermaid`: events, handlings, owed events, findings), with Mermaid's own
#     parser, headless (jsdom stands in for the browser).
#
# The npm packages are installed once into a cache outside the repository
# (CHOREO_TOOLS_DIR, default ~/.cache/choreo/npm); nothing third-party is
# committed. Generated files go to target/renderings/.
#
#   ./scripts/validate-renderings.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${CHOREO_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/choreo/npm}"
packages=(@asyncapi/specs@6.11.1 ajv@8.20.0 ajv-formats@3.0.1 mermaid@11.17.2 jsdom@24.1.3)

if ! command -v npm >/dev/null 2>&1; then
  echo "installing node and npm (Debian packages)"
  # The package lists: fetched unless ./scripts/test.sh already did.
  [ -n "${CHOREO_APT_UPDATED:-}" ] || apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi

stamp="$tools/.choreo-packages"
if [[ ! -d "$tools/node_modules" || "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]]; then
  echo "installing ${packages[*]} into $tools"
  mkdir -p "$tools"
  [[ -f "$tools/package.json" ]] || echo '{"name":"choreo-tools","private":true}' >"$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error "${packages[@]}")
  echo "${packages[*]}" >"$stamp"
fi
# The scripts import from the tools directory, so they run from there.
cp scripts/node/validate-asyncapi.mjs scripts/node/check-mermaid.mjs "$tools/"

cargo build -q -p choreo-cli
choreo=target/debug/choreo
out=target/renderings
rm -rf "$out" && mkdir -p "$out"

docs=() diagrams=()
for topology in topologies/*.yaml topologies/fixtures/broken.yaml; do
  base="$(basename "$topology" .yaml)"
  if [[ "$topology" != *fixtures* ]]; then
    "$choreo" export asyncapi "$topology" -o "$out/$base.asyncapi.json"
    docs+=("$PWD/$out/$base.asyncapi.json")
  fi
  "$choreo" graph "$topology" --format mermaid -o "$out/$base.mmd"
  "$choreo" graph "$topology" --format mermaid --topics -o "$out/$base.topics.mmd"
  diagrams+=("$PWD/$out/$base.mmd" "$PWD/$out/$base.topics.mmd")
done

# One flow of each shape from the tracer's corpus: a replayed dead letter, a
# late flow, an unreadable record, a day-long one, a stuck one, a foreign id.
corpus=crates/trace/tests/corpus
flows=(
  "interleaved topologies/order-fulfillment.yaml 01930000-0003-7003-8001-000000000000"
  "skewed-clocks topologies/order-fulfillment.yaml 01930000-0004-7003-8001-000000000000"
  "foreign $corpus/shop.yaml 01930000-0006-7003-8001-000000000000"
  "foreign $corpus/shop.yaml shop-order-1001"
  "async-reactions topologies/signup-kyc.yaml 01930000-0002-7001-8001-000000000000"
  "no-receipts topologies/order-fulfillment.yaml 01930000-0007-7002-8001-000000000000"
)
for f in "${flows[@]}"; do
  read -r capture topology id <<<"$f"
  # exit 1 is a flow with findings: expected for most of these
  "$choreo" trace "$corpus/$capture.jsonl" -t "$topology" --flow "$id" --format mermaid \
    >"$out/flow-$capture-$id.mmd" || [ $? -eq 1 ]
  diagrams+=("$PWD/$out/flow-$capture-$id.mmd")
done

(cd "$tools" && node validate-asyncapi.mjs "${docs[@]}")
(cd "$tools" && node check-mermaid.mjs "${diagrams[@]}")
