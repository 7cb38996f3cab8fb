#!/usr/bin/env bash
# Runs qmprt's whole test suite: installs what is missing first (idempotent), then pytest.
# Unit tests, then integration tests that boot the tiny guest under real QEMU (TCG when KVM is
# unusable), with real cgroups, network namespaces and gRPC over unix sockets. Needs root.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash tools/install.sh
exec .venv/bin/pytest -p no:cacheprovider "$@"
