#!/usr/bin/env bash
# Builds the `debian` test guest on demand: debootstrap (minbase) of Debian bookworm with real
# cloud-init, qemu-guest-agent, openssh-server and the cloud kernel, as a self-booting qcow2 (MBR +
# extlinux + one ext4 partition labelled debian-root). For end-to-end checks that real cloud-init
# images take qmprt's seeds; not booted by the test suite (cloud-init finishes after ~35 s under TCG).
#
#   images/build-debian.sh         build if needed, point images/out/debian at the result
#
# Output: ${QMPRT_IMAGE_CACHE:-/var/cache/qmprt/images}/debian-<recipe hash>/ with debian.qcow2,
# vmlinuz + initrd.img (for direct kernel boot) and manifest.json. The recipe hash covers this
# script and the host's debootstrap version; the packages are whatever the mirror has at build time.
# Downloads from the Debian mirror (DEBIAN_MIRROR, default: the one in /etc/apt), nothing else.
# Needs root, debootstrap, e2fsprogs, extlinux, qemu-utils. Takes ~1.5 min.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QMPRT_IMAGE_CACHE:-/var/cache/qmprt/images}
out_link=$here/out/debian
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root_label=debian-root
disk_size_mib=2048
cmdline="console=ttyS0 root=LABEL=$root_label rw panic=-1"
# debootstrap does not resolve virtual packages: cloud-init needs python3-cffi-backend named.
# dbus: systemd-logind needs it to act on the ACPI power button (QMP system_powerdown).
# ifupdown + net-tools + resolvconf: what cloud-init's ENI renderer drives on Debian 12 (its routes
# are `route add` lines, its DNS settings dns-* lines for resolvconf).
packages=(
    systemd-sysv udev dbus kmod iproute2 ifupdown net-tools isc-dhcp-client resolvconf
    linux-image-cloud-amd64 initramfs-tools
    cloud-init python3-cffi-backend qemu-guest-agent openssh-server
    ca-certificates less procps
)

die() { echo "build-debian: $*" >&2; exit 1; }

command -v debootstrap > /dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
recipe_hash=$(
    {
        sha256sum < "$here/build-debian.sh"
        dpkg-query -W -f='debootstrap ${Version}\n' debootstrap
        echo "$suite $mirror"
    } | sha256sum | cut -c1-64
)
entry=$cache_root/debian-${recipe_hash:0:16}

# shellcheck source=images/cache.sh
. "$here/cache.sh"
use_cached_entry

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, loop mount)"
mkdir -p "$cache_root"
exec 9> "$cache_root/.debian.lock"
flock 9
use_cached_entry
rm -rf "$entry"

echo "build-debian: building $entry from $mirror ($suite)"
start=$SECONDS
work=$(mktemp -d "$cache_root/.debian-build.XXXXXX")
root=$work/rootfs
mnt=$work/mnt
stage=$work/out
mkdir -p "$root" "$mnt" "$stage"
cleanup() {
    # Whatever is still mounted below the work directory (debootstrap's proc/sys on failure), deepest
    # first.
    awk -v dir="$work/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r mountpoint; do umount -l "$mountpoint" || true; done
    rm -rf "$work"
}
trap cleanup EXIT

include=$(IFS=,; echo "${packages[*]}")
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

kver=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] || die "no kernel/initramfs in the image"

# ---- configuration ----
echo debian > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
printf 'LABEL=%s / ext4 rw,noatime,errors=remount-ro 0 1\n' "$root_label" > "$root/etc/fstab"
cat > "$root/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $suite main
deb http://deb.debian.org/debian-security $suite-security main
EOF
cat > "$root/etc/cloud/cloud.cfg.d/01-qmprt.cfg" <<'EOF'
# qmprt: seeds come as NoCloud (a disk labelled cidata); never probe metadata services on the network.
datasource_list: [ NoCloud, None ]
# The image has no `locales` package: C.UTF-8 is built into glibc.
locale: C.UTF-8
EOF
cat > "$root/etc/network/interfaces" <<'EOF'
# cloud-init writes the interfaces from the seed's network-config into interfaces.d/.
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
EOF
# Every VM must get its own identity: systemd makes a machine-id, cloud-init makes host keys.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log

cp "$root/boot/vmlinuz-$kver" "$stage/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$stage/initrd.img"
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
LABEL debian
  LINUX /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND $cmdline
EOF

# ---- the disk: MBR (syslinux mbr.bin) + one bootable ext4 partition at 1 MiB ----
# extlinux (syslinux 6.04) reads only ext4 with 4 KiB blocks and without 64bit.
part_start=2048
part_sectors=$(( disk_size_mib * 2048 - part_start ))
part=$work/root.ext4
: > "$part"
mke2fs -q -F -t ext4 -b 4096 -O ^64bit -L "$root_label" -d "$root" "$part" "$((part_sectors / 8))"
mount -o loop "$part" "$mnt"
extlinux --install "$mnt/boot/extlinux" 2> /dev/null
umount "$mnt"

raw=$work/disk.raw
truncate -s "${disk_size_mib}M" "$raw"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
le32_bytes() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
# shellcheck disable=SC2059
printf "\\x80\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32_bytes $part_start)$(le32_bytes $part_sectors)" |
    dd of="$raw" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none
dd if="$part" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
qemu-img convert -q -f raw -O qcow2 "$raw" "$stage/debian.qcow2"

cloud_init_version=$(chroot "$root" dpkg-query -W -f='${Version}' cloud-init)
cat > "$stage/manifest.json" <<EOF
{
  "name": "debian",
  "recipe_hash": "$recipe_hash",
  "suite": "$suite",
  "kernel_version": "$kver",
  "cloud_init_version": "$cloud_init_version",
  "files": {
    "vmlinuz": "vmlinuz",
    "initrd": "initrd.img",
    "disk": "debian.qcow2"
  },
  "disk_format": "qcow2",
  "root_label": "$root_label",
  "root_device": "LABEL=$root_label",
  "root_partition": 1,
  "cmdline": "$cmdline",
  "agent_port": "org.qemu.guest_agent.0",
  "seed": {"label": "cidata", "serial": "cidata"}
}
EOF

chmod -R a+rX "$stage"
mv -T "$stage" "$entry"
point_link
echo "build-debian: done in $((SECONDS - start)) s: $entry ($(du -h "$entry/debian.qcow2" | cut -f1))"
