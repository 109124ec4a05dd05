#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing,
# then runs formatting, lints and the whole test suite.
#
#   ./scripts/test.sh            everything
#
# Each step prints a header; the script stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages: the package lists are fetched at most once by this script,
# however many packages turn out to be missing, and not again by the
# validation scripts it calls once it has (they see CHOREO_APT_UPDATED).
apt_install() {
  if [ -z "${CHOREO_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export CHOREO_APT_UPDATED=1
  fi
  apt-get install -y -qq "$@" >/dev/null
}

step "disk space for the build"
# A build from scratch (the test binaries, the soak test's release build, the
# fuzz targets, the pm4py environment) takes about 8 GiB. Running out midway
# fails with a confusing error from whichever tool was writing, so say it up
# front. Only a warning: a build that is mostly there needs far less.
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" 2>/dev/null | awk 'NR == 2 { print $4 }') || free_kb=
if [[ "$free_kb" =~ ^[0-9]+$ ]] && [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024)) MiB free under $target_dir; a build from scratch needs about 8 GiB." >&2
  echo "         Free space (for instance \`cargo clean\` in an old checkout) if a step fails with 'No space left on device'." >&2
fi

step "build dependencies: OpenSSL headers and pkg-config (librdkafka is built with TLS)"
# Before any cargo build: every crate that links choreo-kafka needs them.
if ! dpkg -s libssl-dev pkg-config >/dev/null 2>&1; then
  apt_install --no-install-recommends libssl-dev pkg-config
fi

step "test tools: graphviz (renders the topology graphs in the tests)"
if ! command -v dot >/dev/null 2>&1; then
  apt_install graphviz
fi
# The renderer tests fail, rather than skip, when `dot` is missing.
export CHOREO_REQUIRE_GRAPHVIZ=1

step "test tools: prometheus and promtool (the stack tests run a real Prometheus)"
# Debian's `prometheus` package brings both; tests/stack fails, rather than
# skips, when either is missing.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
fi

step "test tools: PostgreSQL 15 (the outbox's tests start throwaway clusters of it)"
# Debian's `postgresql` package: the server binaries in
# /usr/lib/postgresql/<version>/bin (initdb, pg_ctl), psql on the PATH. The
# tests fail, rather than skip, when they are missing; CHOREO_PG_BIN points
# them at other binaries.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  apt_install --no-install-recommends postgresql
fi

step "test tools: chromium and chromedriver (the flow viewer's browser test drives headless Chromium)"
# Debian's `chromium` and `chromium-driver`: /usr/bin/chromium and
# /usr/bin/chromedriver. The browser test fails, rather than skips, when
# either is missing.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install --no-install-recommends chromium chromium-driver
fi
export CHOREO_REQUIRE_BROWSER=1

step "test tools: pm4py in target/pm4py-venv (reads the tracer's event logs in a test)"
if ! target/pm4py-venv/bin/python -c 'import pm4py' >/dev/null 2>&1; then
  python3 -m venv target/pm4py-venv
  target/pm4py-venv/bin/pip install -q --disable-pip-version-check pm4py
fi
# The event-log test fails, rather than skips, when pm4py is missing.
export CHOREO_REQUIRE_PM4PY=1

step "test tools: the CloudEvents SDK and confluent-kafka in target/interop-venv (a Python peer of the Kafka interop test)"
if ! target/interop-venv/bin/python -c 'import cloudevents.core.bindings.kafka, confluent_kafka' >/dev/null 2>&1; then
  python3 -m venv target/interop-venv
  target/interop-venv/bin/pip install -q --disable-pip-version-check 'cloudevents>=2.2,<3' 'confluent-kafka>=2.16,<3'
fi
# The CloudEvents interop test fails, rather than skips, when they are missing.
export CHOREO_REQUIRE_CLOUDEVENTS=1

step "test tools: tansu (the Kafka-compatible broker the Kafka backend's tests start)"
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
fi
# The Kafka tests on tansu fail, rather than skip, when it is missing.

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "the README's first command builds: choreo without Kafka (--no-default-features)"
cargo clippy -p choreo-cli --no-default-features --all-targets -- -D warnings

step "OpenTelemetry spans across hops (the SDK's otel feature)"
cargo clippy -p choreo-bus --features otel --all-targets -- -D warnings
cargo test -p choreo-bus --features otel --test otel

step "AsyncAPI and Mermaid output validated with the official tools"
./scripts/validate-renderings.sh

step "docker/compose.yaml against the Compose Specification, docker/k8s against the Kubernetes schemas"
./scripts/validate-docker.sh

step "soak: a million flows through the in-process bus, traced live; simulate and demo at 200 000 flows never hang; a tracer killed ten times over 10 000 flows on tansu judges each once (release build)"
# One test at a time: each is a whole process's worth of load on its own.
cargo test --release -p choreo-cli --test it -- --ignored --nocapture --test-threads=1 soak:: simulate_scale:: trace_restart::

step "fuzzing: every cargo-fuzz target for ${CHOREO_FUZZ_SECONDS:-20} s (stable toolchain, no sanitizer)"
./scripts/fuzz.sh "${CHOREO_FUZZ_SECONDS:-20}"

step "all green"
