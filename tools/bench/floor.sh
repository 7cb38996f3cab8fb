#!/bin/bash
# The floor: QEMU started from a shell script with qmprt's own arguments, until the guest's ready
# marker is in its serial console file. Polls every 5 ms without forking (bash builtins only), so the
# script costs the guest no CPU. Prints "<start> <marker seen>" as epoch seconds, then kills QEMU.
# usage: floor.sh CONSOLE-FILE MARKER QEMU-ARGV...
set -u
console=$1 marker=$2
shift 2
exec {never}<> <(:)  # a pipe nobody writes to: `read -t` on it sleeps without a fork
start=$EPOCHREALTIME
"$@" </dev/null >"$console.qemu.log" 2>&1 &
qemu=$!
text=
while [[ $text != *"$marker"* ]]; do
  if ! kill -0 "$qemu" 2>/dev/null; then
    echo "floor: QEMU exited before the marker: $(tail -c 400 "$console.qemu.log")" >&2
    exit 1
  fi
  read -rt 0.005 -u "$never" _ || true
  [[ -e $console ]] && { IFS= read -rd '' text <"$console" || true; }
done
seen=$EPOCHREALTIME
kill -KILL "$qemu"
wait "$qemu" 2>/dev/null
echo "$start $seen"
