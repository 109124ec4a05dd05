#!/usr/bin/env bash
# Validates the deployment files of docker/ with real parsers of their
# formats, strictly (an unknown key is an error):
#
#   - docker/compose.yaml against the Compose Specification, with the
#     compose_spec model (PyPI `compose-spec`, bindings of the compose_spec
#     crate), after PyYAML resolved its `<<` merge keys as Compose does;
#   - docker/k8s/*.yaml against the Kubernetes API schemas with
#     kubernetes-validate, for the oldest and the newest release it knows here.
#
# Both packages carry what they check against, so they need no network once
# installed: once, into a virtualenv outside the repository (CHOREO_DOCKER_VENV,
# default ~/.cache/choreo/docker-venv), again only when the pins change.
#
#   ./scripts/validate-docker.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(kubernetes-validate==1.37.0 compose-spec==0.2.1 PyYAML==6.0.4)
kubernetes_versions=(1.29.0 1.37.0)
venv="${CHOREO_DOCKER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/choreo/docker-venv}"
stamp="$venv/.choreo-packages"

if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]]; then
  echo "installing ${packages[*]} into $venv"
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # The package lists: fetched unless ./scripts/test.sh already did.
    [ -n "${CHOREO_APT_UPDATED:-}" ] || apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
  echo "${packages[*]}" >"$stamp"
fi

"$venv/bin/python" - docker/compose.yaml <<'PY'
import json, sys
import yaml
from compose_spec import PyCompose

path = sys.argv[1]
with open(path) as f:
    spec = yaml.safe_load(f)
try:
    compose = PyCompose.from_json(json.dumps(spec))
except ValueError as e:
    sys.exit(f"{path}: not a valid Compose file: {e}")
print(f"{path}: valid Compose file, services: {', '.join(compose.service_names())}")
PY

manifests=(docker/k8s/*.yaml)
for k in "${kubernetes_versions[@]}"; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "${manifests[@]}"
  echo "docker/k8s: ${#manifests[@]} files valid for Kubernetes $k (strict)"
done
