#!/usr/bin/env bash
# Installs everything qmprt needs on a Debian 12 machine, as root. Idempotent: a second run only
# checks. Debian packages, a virtual environment at ./.venv with qmprt in it, and the tiny test guest.
set -euo pipefail
demo=false
case "${1-}" in
  --demo) demo=true ;;
  "") ;;
  *) echo "usage: tools/install.sh [--demo]" >&2; exit 2 ;;
esac
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

debs=(
  qemu-system-x86 qemu-utils qemu-guest-agent busybox-static
  containernetworking-plugins linux-image-cloud-amd64
  extlinux syslinux-common e2fsprogs cpio kmod lz4 xz-utils zstd
  iproute2 python3-venv python3-pip openssl curl debootstrap
)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

# The tiny guest is cached by the hash of its recipe.
bash images/build-tiny.sh
echo "install: done"
if $demo; then
  exec bash tools/demo.sh
fi
