#!/usr/bin/env bash
# Builds the `tiny` test guest from Debian packages installed on this machine (no downloads):
# Debian's cloud kernel, busybox-static, qemu-guest-agent with its libraries, qmprt's exec helper
# (images/out/qmprt-exec, built by images/build-exec.sh) and images/tiny/*.
#
#   images/build-tiny.sh            build if needed, point images/out/tiny at the result
#
# Output: ${QMPRT_IMAGE_CACHE:-/var/cache/qmprt/images}/tiny-<recipe hash>/ with vmlinuz, vmlinux,
# initrd.img, tiny.qcow2 and manifest.json (see images/README.md). The recipe hash covers this
# script, images/tiny/*, and the versions of every package whose files end up in the image, so an
# existing entry is reused as is: tools/install.sh calls this on every run.
# Needs root (loop mount for extlinux), e2fsprogs, extlinux, cpio, kmod, lz4, qemu-utils.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
recipe=$here/tiny
cache_root=${QMPRT_IMAGE_CACHE:-/var/cache/qmprt/images}
out_link=$here/out/tiny
root_label=tiny-root
# extlinux's own command line; direct kernel boot gets the same through manifest.json.
# panic=-1: a panicking guest resets at once (QEMU has seen GUEST_PANICKED through pvpanic by then;
# run QEMU with -no-reboot). cryptomgr.notests, mitigations=off and nokaslr each save 0.1-0.2 s
# under TCG; the guest runs one container, so in-guest Spectre mitigations buy nothing here.
cmdline="console=ttyS0 root=LABEL=$root_label quiet panic=-1 cryptomgr.notests mitigations=off nokaslr"
disk_size_mib=256

die() { echo "build-tiny: $*" >&2; exit 1; }

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || die "package $1 is not installed"; }

# The kernel is whatever linux-image-cloud-amd64 currently depends on.
kernel_pkg=$(dpkg-query -W -f='${Depends}' linux-image-cloud-amd64 2>/dev/null |
    tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*-cloud-amd64\).*/\1/p' | head -n1)
[ -n "$kernel_pkg" ] || die "linux-image-cloud-amd64 is not installed"
kver=${kernel_pkg#linux-image-}
[ -f "/boot/vmlinuz-$kver" ] || die "/boot/vmlinuz-$kver is missing"
[ -d "/lib/modules/$kver" ] || die "/lib/modules/$kver is missing"

qemu_ga=/usr/sbin/qemu-ga
[ -x "$qemu_ga" ] || die "$qemu_ga is missing (package qemu-guest-agent)"
exec_helper=$here/out/qmprt-exec
[ -x "$exec_helper" ] || bash "$here/build-exec.sh"
[ -x "$exec_helper" ] || die "$exec_helper is missing (images/build-exec.sh builds it)"
[ -x /bin/busybox ] || die "/bin/busybox is missing (package busybox-static)"
/bin/busybox --list | grep -x udhcpc > /dev/null || die "/bin/busybox has no udhcpc applet (the guest's DHCP client)"
mapfile -t agent_libs < <(ldd "$qemu_ga" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}')

recipe_hash=$(
    {
        for file in "$here/build-tiny.sh" "$recipe"/*; do
            printf '%s ' "${file#"$here"/}"
            sha256sum < "$file"
        done
        echo "kernel $kver $(pkg_version "$kernel_pkg")"
        for pkg in busybox-static qemu-guest-agent extlinux syslinux-common; do
            echo "$pkg $(pkg_version "$pkg")"
        done
        # The agent's shared libraries come from other packages: hash their bytes.
        sha256sum "${agent_libs[@]}"
        echo "qmprt-exec $(sha256sum < "$exec_helper")"
    } | sha256sum | cut -c1-64
)
entry=$cache_root/tiny-${recipe_hash:0:16}

# shellcheck source=images/cache.sh
. "$here/cache.sh"
use_cached_entry

[ "$(id -u)" = 0 ] || die "must run as root (extlinux needs the root filesystem loop-mounted)"
mkdir -p "$cache_root"
exec 9> "$cache_root/.tiny.lock"
flock 9
use_cached_entry  # built by a concurrent run while we waited
rm -rf "$entry"  # an entry without its manifest is not ours to trust

echo "build-tiny: building $entry (kernel $kver)"
start=$SECONDS
work=$(mktemp -d "$cache_root/.tiny-build.XXXXXX")
mnt=$work/mnt
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    rm -rf "$work"
}
trap cleanup EXIT

stage=$work/out
rootfs=$work/rootfs
initramfs=$work/initramfs
mkdir -p "$stage" "$rootfs" "$initramfs" "$mnt"

read_list() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$1"; }

# module_files MODULE...: the .ko paths (relative to /lib/modules/$kver) of the modules and their
# dependencies; modules this kernel lacks are reported on stderr and skipped.
module_files() {
    local module
    for module in "$@"; do
        if ! modprobe -S "$kver" --show-depends "$module" 2>/dev/null |
            awk '$1 == "insmod" {print $2}' | sed "s|^/lib/modules/$kver/||" | grep .; then
            echo "build-tiny: kernel $kver has no module $module, skipped" >&2
        fi
    done | sort -u
}

# existing_modules MODULE...: those this kernel has, so the guest's modprobe -a never fails on one.
existing_modules() {
    local module
    for module in "$@"; do
        modinfo -k "$kver" -F filename "$module" > /dev/null 2>&1 && echo "$module"
    done
    return 0
}

# install_modules DEST FILE...: copy module files into DEST/lib/modules/$kver and run depmod there.
install_modules() {
    local dest=$1 file
    shift
    for file in "$@"; do
        install -D -m 0644 "/lib/modules/$kver/$file" "$dest/lib/modules/$kver/$file"
    done
    for file in modules.order modules.builtin modules.builtin.modinfo; do
        cp "/lib/modules/$kver/$file" "$dest/lib/modules/$kver/"
    done
    depmod -b "$dest" "$kver"
}

# install_busybox DEST: busybox plus a symlink for every applet but busybox itself (linking it
# onto itself gives an ELOOP panic at /init).
install_busybox() {
    local dest=$1 applet
    install -D -m 0755 /bin/busybox "$dest/bin/busybox"
    /bin/busybox --list-full | while read -r applet; do
        [ "$applet" = bin/busybox ] && continue
        [ -e "$dest/$applet" ] || [ -L "$dest/$applet" ] && continue
        mkdir -p "$dest/$(dirname "$applet")"
        ln -s /bin/busybox "$dest/$applet"
    done
}

# ---- initramfs: busybox, the block drivers, /init ----
mkdir -p "$initramfs"/{dev,proc,sys,newroot}
mknod -m 0600 "$initramfs/dev/console" c 5 1
install_busybox "$initramfs"
install -m 0755 "$recipe/initramfs-init" "$initramfs/init"
mapfile -t initramfs_modules < <(read_list "$recipe/modules.initramfs")
mapfile -t files < <(module_files "${initramfs_modules[@]}")
install_modules "$initramfs" "${files[@]}"
mkdir -p "$initramfs/etc"
existing_modules "${initramfs_modules[@]}" > "$initramfs/etc/modules-initramfs"
(cd "$initramfs" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
    lz4 -q -l -9 > "$stage/initrd.img"

# ---- root filesystem ----
mkdir -p "$rootfs"/{dev,proc,sys,run,tmp,root,mnt,boot/extlinux,etc/qmprt,etc/cloud,var/lib,var/log}
mkdir -p "$rootfs"/{etc/init.d,etc/acpi/PWRF,usr/lib/qmprt,usr/sbin,lib64}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
ln -s /run "$rootfs/var/run"
install_busybox "$rootfs"
install -m 0755 "$qemu_ga" "$rootfs/usr/sbin/qemu-ga"
install -m 0755 "$exec_helper" "$rootfs/usr/sbin/qmprt-exec"
for lib in "${agent_libs[@]}"; do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
mapfile -t boot_modules < <(read_list "$recipe/modules.boot")
mapfile -t extra_modules < <(read_list "$recipe/modules.extra")
mapfile -t files < <(module_files "${initramfs_modules[@]}" "${boot_modules[@]}" "${extra_modules[@]}")
install_modules "$rootfs" "${files[@]}"
existing_modules "${boot_modules[@]}" > "$rootfs/etc/qmprt/modules"

install -m 0755 "$recipe/rcS" "$rootfs/etc/init.d/rcS"
install -m 0755 "$recipe/rcK" "$rootfs/etc/init.d/rcK"
install -m 0755 "$recipe/runcmd" "$rootfs/etc/init.d/runcmd"
install -m 0755 "$recipe/acpi-power" "$rootfs/etc/acpi/PWRF/00000080"
rm -f "$rootfs/sbin/poweroff"
install -m 0755 "$recipe/poweroff" "$rootfs/sbin/poweroff"
install -m 0644 "$recipe/inittab" "$rootfs/etc/inittab"
install -m 0644 "$recipe/yaml2sh.awk" "$rootfs/usr/lib/qmprt/yaml2sh.awk"
install -m 0755 "$recipe/udhcpc.script" "$rootfs/etc/qmprt/udhcpc.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' > "$rootfs/etc/group"
echo tiny > "$rootfs/etc/hostname"
: > "$rootfs/etc/cloud/environment"
printf 'LABEL=%s / ext4 rw,noatime 0 1\n' "$root_label" > "$rootfs/etc/fstab"
printf 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n' > "$rootfs/etc/profile"

cp "/boot/vmlinuz-$kver" "$stage/vmlinuz"
cp "$stage/vmlinuz" "$rootfs/boot/vmlinuz"
cp "$stage/initrd.img" "$rootfs/boot/initrd.img"
cat > "$rootfs/boot/extlinux/extlinux.conf" <<EOF
DEFAULT tiny
PROMPT 0
LABEL tiny
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND $cmdline
EOF

# ---- vmlinux: the bzImage's LZ4 payload, an ELF with a PVH entry (faster -kernel boot) ----
# boot_params: setup_sects at 0x1f1; payload_offset/payload_length at 0x248/0x24c, relative to the
# protected-mode code, which starts after (setup_sects + 1) sectors. The kernel appends the
# uncompressed size (4 bytes) after the LZ4 stream.
le32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
setup_sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$stage/vmlinuz" | tr -d ' ')
payload_offset=$(le32 "$stage/vmlinuz" $((0x248)))
payload_length=$(le32 "$stage/vmlinuz" $((0x24c)))
payload_start=$(( (setup_sects + 1) * 512 + payload_offset ))
if dd if="$stage/vmlinuz" iflag=skip_bytes,count_bytes skip="$payload_start" \
    count=$((payload_length - 4)) status=none | lz4 -q -d -c > "$stage/vmlinux" &&
    [ "$(head -c 4 "$stage/vmlinux" | od -An -t x1 | tr -d ' ')" = 7f454c46 ]; then
    vmlinux_json='"vmlinux"'
else
    echo "build-tiny: could not extract vmlinux from the bzImage; skipped" >&2
    rm -f "$stage/vmlinux"
    vmlinux_json=null
fi

# ---- the disk: MBR (syslinux mbr.bin) + one bootable ext4 partition at 1 MiB ----
# extlinux (syslinux 6.04) reads only ext4 with 4 KiB blocks and without 64bit.
part_start=2048
part_sectors=$(( disk_size_mib * 2048 - part_start ))
part=$work/root.ext4
: > "$part"
mke2fs -q -F -t ext4 -b 4096 -O ^64bit -L "$root_label" -d "$rootfs" -E root_owner=0:0 \
    "$part" "$((part_sectors / 8))"
mount -o loop "$part" "$mnt"
extlinux --install "$mnt/boot/extlinux" 2> /dev/null
umount "$mnt"

raw=$work/disk.raw
truncate -s "${disk_size_mib}M" "$raw"
mbr=/usr/lib/syslinux/mbr/mbr.bin
dd if="$mbr" of="$raw" bs=440 count=1 conv=notrunc status=none
# One partition entry: active, type 0x83, LBA start/length; CHS fields say "use LBA".
le32_bytes() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
# shellcheck disable=SC2059
printf "\\x80\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32_bytes $part_start)$(le32_bytes $part_sectors)" |
    dd of="$raw" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none
dd if="$part" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
qemu-img convert -q -f raw -O qcow2 "$raw" "$stage/tiny.qcow2"

# ---- manifest ----
sizes() { stat -c '%s' "$stage/$1"; }
cat > "$stage/manifest.json" <<EOF
{
  "name": "tiny",
  "recipe_hash": "$recipe_hash",
  "kernel_version": "$kver",
  "kernel_package_version": "$(pkg_version "$kernel_pkg")",
  "files": {
    "vmlinuz": "vmlinuz",
    "vmlinux": $vmlinux_json,
    "initrd": "initrd.img",
    "disk": "tiny.qcow2"
  },
  "sizes": {
    "vmlinuz": $(sizes vmlinuz),
    "vmlinux": $( [ -f "$stage/vmlinux" ] && sizes vmlinux || echo null ),
    "initrd": $(sizes initrd.img),
    "disk": $(sizes tiny.qcow2)
  },
  "disk_format": "qcow2",
  "root_label": "$root_label",
  "root_device": "LABEL=$root_label",
  "root_partition": 1,
  "cmdline": "$cmdline",
  "microvm_cmdline_extra": "tsc_early_khz=<host TSC kHz>",
  "ready_marker": "qmprt: guest ready",
  "agent_port": "org.qemu.guest_agent.0",
  "exec_port": "io.qmprt.exec.0",
  "seed": {"label": "cidata", "serial": "cidata"}
}
EOF

chmod -R a+rX "$stage"
mv -T "$stage" "$entry"
point_link
echo "build-tiny: done in $((SECONDS - start)) s: $entry"
