#!/usr/bin/env bash
# The main job: a VM pod started through qmprt's CRI socket, end to end, then torn down.
# Starts `qmprt serve` on a temporary state root inside a private "node" network namespace with a
# bridge + host-local CNI network (nothing touches the machine's own network), pulls the tiny guest by
# name (a translation rule maps the name to the image file), runs it as a pod, shows status, pod IP
# and console log, pings the guest from the node, runs `uname -r` in it through the guest agent,
# stops and removes everything.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
qmprt=$top/.venv/bin/qmprt
tiny=$(readlink -f images/out/tiny)
work=$(mktemp -d /tmp/qmprt-demo.XXXXXX)
sock=$work/qmprt.sock
node=qmprt-demo-$$
server=
pod=

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$qmprt" --log-level warning ctl -r "$sock" "$@"; }

cleanup() {
    set +e
    [ -n "$pod" ] && ctl rmp "$pod" >/dev/null 2>&1
    if [ -n "$server" ]; then
        kill -TERM "$server" 2>/dev/null
        wait "$server" 2>/dev/null
    fi
    ip netns del "$node" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/qmprt.toml" <<TOML
[runtime]
state_dir = "$work/state"
run_dir = "$work/run"
socket = "$sock"

[cni]
conf_dir = "$work/net.d"

[image]
file_roots = ["$tiny"]

[[image.rule]]
name = "qmprt.local/tiny:latest"
url = "file://$tiny/tiny.qcow2"
TOML

# The pod network, as Flannel lays it out: a bridge on the node, host-local addresses.
mkdir -p "$work/net.d"
cat > "$work/net.d/10-demo.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "demo", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$work/ipam", "ranges": [[{"subnet": "10.123.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON

mkdir -p "$work/logs"
cat > "$work/pod.json" <<JSON
{"metadata": {"name": "demo", "namespace": "default", "uid": "demo-$$"},
 "hostname": "demo-vm", "log_directory": "$work/logs", "labels": {"app": "demo"}, "linux": {}}
JSON
cat > "$work/container.json" <<JSON
{"metadata": {"name": "tiny"}, "image": {"image": "qmprt.local/tiny"}, "log_path": "tiny.log",
 "envs": [{"key": "GREETING", "value": "hello from the node"}],
 "command": ["/bin/sh", "-c", "echo \"\$GREETING, I am \$(hostname)\""]}
JSON

step "qmprt serve in the node namespace $node (state in $work)"
ip netns add "$node"
ip -n "$node" link set lo up
# nsenter execs serve itself (no fork), so \$! is serve's pid.
nsenter --net="/var/run/netns/$node" -- "$qmprt" serve --config "$work/qmprt.toml" > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/serve.log"; exit 1; }
ctl version

step "pull the image by name"
ctl pull qmprt.local/tiny
ctl images

step "run the pod, create and start its VM container"
started=$(date +%s.%N)
pod=$(ctl runp "$work/pod.json")
container=$(ctl create "$pod" "$work/container.json" "$work/pod.json")
ctl start "$container"
ctl pods
ctl ps

step "wait for the guest's ready marker in the container log"
for _ in $(seq 600); do
    ctl logs "$container" 2>/dev/null | grep -q 'qmprt: guest ready' && break
    sleep 0.1
done
ready=$(date +%s.%N)
ctl logs "$container" | grep -q 'qmprt: guest ready' || { echo "the guest did not come up"; cat "$work/serve.log"; exit 1; }
awk -v a="$started" -v b="$ready" 'BEGIN { printf "runp+create+start to ready (polled through ctl): %.2f s\n", b - a }'
sleep 0.5
ctl logs "$container" | tail -n 5

step "the pod's IP: held by the guest, reached from the node"
ip=$(ctl inspectp "$pod" | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -n 1)
[ -n "$ip" ] || { echo "the pod has no IP"; ctl inspectp "$pod"; exit 1; }
echo "pod IP: $ip"
ctl exec "$container" ip -4 -o addr show dev eth0
ip netns exec "$node" busybox ping -c 2 -W 3 "$ip"

step "exec: uname -r and the pod's hostname, through the guest agent"
ctl exec "$container" uname -r
ctl exec "$container" cat /etc/hostname

step "stop and remove"
ctl stop "$container"
ctl inspect "$container" | grep -E '"(state|exitCode|exit_code|reason)"' || true
ctl rm "$container"
ctl rmp "$pod"
pod=
ctl pods
echo
echo "demo done: the VM pod booted on its CNI network, answered ping and exec, and was removed"
