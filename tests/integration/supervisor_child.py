"""A stand-in for a qmprt process: starts one VM, reports, then waits to be killed.

Usage: python supervisor_child.py CONFIG_JSON STATE_DIR RUN_DIR CGROUP_PATH LOG_PATH
"""

import asyncio
import json
import sys

from qmprt import cgroups
from qmprt.vm.console import CRILogWriter
from qmprt.vm.config import VMConfig
from qmprt.vm.machine import VM


async def main() -> None:
    config = VMConfig.from_json(json.loads(sys.argv[1]))
    cgroup = cgroups.detect().open(sys.argv[4])
    vm = await VM.start(config, sys.argv[2], sys.argv[3], cgroup=cgroup, log_writer=CRILogWriter(sys.argv[5]))
    print(f"started {vm.status.pid}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
