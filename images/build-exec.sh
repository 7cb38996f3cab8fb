#!/usr/bin/env bash
# Builds qmprt's in-guest exec helper, images/exec/qmprt-exec.c, as one static binary (gcc -static -Os):
# it runs unchanged on the busybox tiny guest, the debian guest and any x86_64 cloud image that gets it
# through the cloud-init seed.
#
#   images/build-exec.sh            build if needed, point images/out/qmprt-exec at the result
#
# Output: ${QMPRT_IMAGE_CACHE:-/var/cache/qmprt/images}/exec-<hash>/qmprt-exec, cached by the hash of
# this script, the source and the compiler and libc versions. Needs gcc and libc6-dev.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_file=$here/exec/qmprt-exec.c
cache_root=${QMPRT_IMAGE_CACHE:-/var/cache/qmprt/images}
out_link=$here/out/qmprt-exec

die() { echo "build-exec: $*" >&2; exit 1; }
command -v gcc > /dev/null || die "gcc is missing (package gcc)"
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || die "package $1 is not installed"; }

recipe_hash=$(
    {
        sha256sum < "$here/build-exec.sh"
        sha256sum < "$source_file"
        echo "gcc $(gcc -dumpfullversion) libc6-dev $(pkg_version libc6-dev)"
    } | sha256sum | cut -c1-64
)
entry=$cache_root/exec-${recipe_hash:0:16}

if [ ! -x "$entry/qmprt-exec" ]; then
    mkdir -p "$cache_root"
    work=$(mktemp -d "$cache_root/.exec-build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    gcc -static -Os -s -Wall -Wextra -Werror -o "$work/qmprt-exec" "$source_file"
    chmod 0755 "$work/qmprt-exec" "$work"
    mv -T "$work" "$entry" 2> /dev/null || [ -x "$entry/qmprt-exec" ] || die "cannot create $entry"
    echo "build-exec: built $entry/qmprt-exec"
fi
mkdir -p "$(dirname "$out_link")"
if [ "$(readlink "$out_link" 2>/dev/null)" != "$entry/qmprt-exec" ]; then
    ln -sfn "$entry/qmprt-exec" "$out_link.new"
    mv -T "$out_link.new" "$out_link"
fi
