#!/usr/bin/env bash
# systemd-analyze verify and security on the shipped unit, with ExecStart pointing at the built
# binary (verify checks that the executable exists). Exposure must stay at or below MAX_EXPOSURE.
set -euo pipefail
unit_src=$1 binary=$2 max_exposure=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|/usr/sbin/kpulse|$binary|" "$unit_src" > "$dir/kpulse.service"
systemd-analyze verify "$dir/kpulse.service"
exposure=$(systemd-analyze security --offline=true "$dir/kpulse.service" 2>/dev/null |
  sed -n 's/.*Overall exposure level for kpulse.service: \([0-9.]*\).*/\1/p')
echo "exposure: $exposure (max $max_exposure)"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e != "" && e <= m) }'
