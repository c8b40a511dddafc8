#!/bin/sh
# deploy/kubernetes/prometheusrule.yaml must be what deploy/tools/gen-prometheusrule writes from
# the rule files now: regenerate into a temporary file and compare byte for byte.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$root/deploy/tools/gen-prometheusrule" -o "$tmp"
if ! diff -u "$root/deploy/kubernetes/prometheusrule.yaml" "$tmp"; then
  echo "FAIL: deploy/kubernetes/prometheusrule.yaml is stale (diff above: committed vs generated)." >&2
  echo "Regenerate it: deploy/tools/gen-prometheusrule   (then commit the result)" >&2
  exit 1
fi
echo "deploy/kubernetes/prometheusrule.yaml matches deploy/tools/gen-prometheusrule"
