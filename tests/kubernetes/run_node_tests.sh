#!/bin/sh
# The manifest tests (node's test runner). `make deps` installs node and runs `npm ci` here.
set -eu
cd "$(dirname "$0")"
if [ ! -d node_modules/kubernetes-models ] || [ ! -d node_modules/@kubernetes-models/prometheus-operator ]; then
  echo "tests/kubernetes/node_modules is missing: run 'make deps' (or 'npm ci' in tests/kubernetes)" >&2
  exit 1
fi
exec node --test validate.test.mjs policy.test.mjs prometheusrule.test.mjs
