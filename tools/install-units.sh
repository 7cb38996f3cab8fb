#!/usr/bin/env bash
# Installs deploy/systemd's units for an edge node, their ExecStart pointing at QMPRT (this checkout's
# .venv/bin/qmprt by default), and the example configs as /etc/qmprt/{qmprt,proxy}.toml where none
# exist yet. Enables and starts them where systemd runs; elsewhere says so and stops there.
#   tools/install-units.sh [QMPRT] [UNIT_DIR]    (UNIT_DIR: /etc/systemd/system)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
qmprt=${1:-$top/.venv/bin/qmprt}
unit_dir=${2:-/etc/systemd/system}
config_dir=${QMPRT_CONFIG_DIR:-/etc/qmprt}
[ -x "$qmprt" ] || { echo "install-units: $qmprt is not an executable qmprt" >&2; exit 1; }
mkdir -p "$unit_dir" "$config_dir"
for unit in qmprt.service qmprt-proxy.service; do
  sed -e "s|/opt/qmprt/venv/bin/qmprt|$qmprt|" \
      -e "s|file:///opt/qmprt/|file://$top/|" -e "s|/etc/qmprt/|$config_dir/|g" \
      "$top/deploy/systemd/$unit" > "$unit_dir/$unit.tmp"
  mv "$unit_dir/$unit.tmp" "$unit_dir/$unit"
done
for config in qmprt.toml proxy.toml; do
  [ -e "$config_dir/$config" ] || install -m 0644 "$top/deploy/config/$config" "$config_dir/$config"
done
echo "install-units: $unit_dir/qmprt.service and qmprt-proxy.service run $qmprt; configs in $config_dir"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now qmprt.service qmprt-proxy.service
  echo "install-units: enabled and started"
else
  echo "install-units: systemd is not running here: the units are installed, not enabled"
fi
