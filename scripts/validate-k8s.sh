#!/usr/bin/env bash
# Validates the Kubernetes manifests of docker/k8s against the Kubernetes API
# schemas with kubernetes-validate, strictly (an unknown field is an error),
# for the oldest and the newest Kubernetes release it knows here.
#
# kubernetes-validate (PyPI) ships the schemas of every release it supports,
# so it needs no network after it is installed: once, into a virtualenv
# outside the repository (CHOREO_K8S_VENV, default ~/.cache/choreo/k8s-venv),
# reinstalled only when the pinned version changes.
#
#   ./scripts/validate-k8s.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.37.0
kubernetes_versions=(1.29.0 1.37.0)
venv="${CHOREO_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/choreo/k8s-venv}"
stamp="$venv/.choreo-kubernetes-validate"

if [[ ! -x "$venv/bin/kubernetes-validate" || "$(cat "$stamp" 2>/dev/null)" != "$version" ]]; then
  echo "installing kubernetes-validate $version into $venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
  echo "$version" >"$stamp"
fi

manifests=(docker/k8s/*.yaml)
for k in "${kubernetes_versions[@]}"; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "${manifests[@]}"
  echo "docker/k8s: ${#manifests[@]} files valid for Kubernetes $k (strict)"
done
