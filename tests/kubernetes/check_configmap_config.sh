#!/bin/sh
# The kpulse configuration inside deploy/kubernetes/configmap.yaml, checked by kpulse itself:
#   check_configmap_config.sh KPULSE_BINARY
set -eu
kpulse=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
/usr/bin/python3 - "$root/deploy/kubernetes/configmap.yaml" "$dir/kpulse.yaml" <<'PY'
import sys, yaml
with open(sys.argv[1], encoding="utf-8") as f:
    configmap = yaml.safe_load(f)
assert configmap["kind"] == "ConfigMap", configmap["kind"]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write(configmap["data"]["kpulse.yaml"])
PY
if ! "$kpulse" --check-config "$dir/kpulse.yaml"; then
  echo "FAIL: the kpulse.yaml of deploy/kubernetes/configmap.yaml (line numbers above count from" \
       "the first line of that block)" >&2
  exit 1
fi
