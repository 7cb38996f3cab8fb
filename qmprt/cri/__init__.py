"""The CRI v1 gRPC server: thin servicers over ``qmprt.pod``, errors mapped in one interceptor.

``disable_grpc_fork_support`` must run in a process before it first imports grpc; importing this
package does nothing else and loads no grpc.
"""

import os


def disable_grpc_fork_support() -> None:
    """Switch gRPC's fork handlers off for this process, unless its environment already says.

    A process forked from a worker thread while gRPC threads are busy (pyroute2 forks to create a
    network namespace) otherwise dies with SIGSEGV in those handlers. No child of qmprt uses gRPC,
    so nothing needs them. grpc reads the variable when it is first imported: ``qmprt.cli.main``
    calls this first of all, before its argument parser loads the ctl client (and with it grpc);
    the test suite calls it from ``tests/conftest.py``, since tests run servers in-process.
    """
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
