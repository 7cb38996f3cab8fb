#!/usr/bin/env bash
# Installs everything qmprt needs on a Debian 12 machine, as root. Idempotent: a second run only
# checks. Debian packages, a virtual environment at ./.venv with qmprt in it, and the tiny test guest.
# containerd and runc are there for the proxy's tests (a VM pod beside a container pod), the
# distribution registry, skopeo and htpasswd (apache2-utils) for the containerDisk tests, --bench adds
# libvirt for the benchmark; their system services are not started: tests and benchmark run private
# instances. --systemd installs qmprt.service and qmprt-proxy.service for an edge node
# (tools/install-units.sh) and enables them where systemd runs.
set -euo pipefail
demo=false
bench=false
systemd=false
for arg in "$@"; do
  case "$arg" in
    --demo) demo=true ;;
    --bench) bench=true ;;
    --systemd) systemd=true ;;
    *) echo "usage: tools/install.sh [--demo] [--bench] [--systemd]" >&2; exit 2 ;;
  esac
done
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

debs=(
  qemu-system-x86 qemu-utils qemu-guest-agent busybox-static
  containernetworking-plugins linux-image-cloud-amd64
  extlinux syslinux-common e2fsprogs cpio kmod lz4 xz-utils zstd
  iproute2 procps util-linux python3-venv python3-pip openssl curl debootstrap gcc libc6-dev
  containerd runc
  docker-registry skopeo apache2-utils
)
bench_debs=(libvirt-daemon-system libvirt-clients)
if $bench; then
  debs+=("${bench_debs[@]}")
fi
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Keep the packages' own daemons (containerd, docker-registry, libvirtd) from starting on install, unless a policy
  # is already in place.
  policy=/usr/sbin/policy-rc.d
  made_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    made_policy=true
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if $made_policy; then
    rm -f "$policy"
    trap - EXIT
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv"
  "$python" -m venv .venv
fi
# Reinstall only when the project's dependency list changed.
stamp=.venv/.qmprt-deps.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "install: python packages"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi

# The exec helper (baked into the tiny guest, delivered to others through the seed) and the tiny
# guest are cached by the hashes of their recipes.
bash images/build-exec.sh
bash images/build-tiny.sh
if $systemd; then
  bash tools/install-units.sh "$top/.venv/bin/qmprt"
fi
echo "install: done"
if $demo; then
  exec bash tools/demo.sh
fi
