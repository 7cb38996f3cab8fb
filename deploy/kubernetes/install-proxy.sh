#!/bin/sh
# The DaemonSet's init container: installs qmprt proxy on the host as a systemd unit, the way
# Virtlet bootstrapped its CRI proxy. kubelet needs its CRI endpoint to start any pod, this
# DaemonSet's included, so the proxy cannot live in a pod that kubelet restarts through it.
#
# It copies this image's root filesystem to the host's /opt/qmprt/rootfs (the unit runs the proxy
# there with RootDirectory=, so the host needs no Python of its own), the unit and its config, then
# asks the host's systemd (through PID 1's namespaces: the pod has hostPID) to (re)start it. A
# proxy already running the same image is left alone.
set -eu
host=/host
want=$(cat /opt/qmprt/image-id 2>/dev/null || echo unknown)
have=$(cat "$host/opt/qmprt/rootfs/opt/qmprt/image-id" 2>/dev/null || echo none)
if [ "$want" != "$have" ]; then
  rm -rf "$host/opt/qmprt/rootfs.new"
  mkdir -p "$host/opt/qmprt/rootfs.new"
  # -x: this filesystem only (not /proc, /sys, /dev or the host mounts under /host)
  cp -ax / "$host/opt/qmprt/rootfs.new/"
  rm -rf "$host/opt/qmprt/rootfs.old"
  [ -d "$host/opt/qmprt/rootfs" ] && mv "$host/opt/qmprt/rootfs" "$host/opt/qmprt/rootfs.old"
  mv "$host/opt/qmprt/rootfs.new" "$host/opt/qmprt/rootfs"
fi
mkdir -p "$host/etc/qmprt" "$host/etc/systemd/system/qmprt-proxy.service.d"
cp /etc/qmprt/proxy.toml "$host/etc/qmprt/proxy.toml"
cp /opt/qmprt/src/deploy/systemd/qmprt-proxy.service "$host/etc/systemd/system/qmprt-proxy.service"
cat > "$host/etc/systemd/system/qmprt-proxy.service.d/10-image-rootfs.conf" <<'UNIT'
# Written by the qmprt DaemonSet: the proxy runs from the image's filesystem, copied to the host.
[Service]
RootDirectory=/opt/qmprt/rootfs
BindPaths=/run/qmprt /run/containerd /var/lib/qmprt-proxy
BindReadOnlyPaths=/etc/qmprt
UNIT
mkdir -p "$host/run/qmprt" "$host/var/lib/qmprt-proxy"
on_host() { nsenter -t 1 -m -u -i -n -p -- "$@"; }
on_host systemctl daemon-reload
on_host systemctl enable qmprt-proxy.service
# A restart is a second or two without a CRI endpoint for kubelet (it retries); only for a new image.
if [ "$want" != "$have" ] || ! on_host systemctl is-active --quiet qmprt-proxy.service; then
  on_host systemctl restart qmprt-proxy.service
fi
echo "install-proxy: qmprt-proxy.service runs image $want on the host"
