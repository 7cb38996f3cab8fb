"""The CRI v1 gRPC server: thin servicers over ``qmprt.pod``, errors mapped in one interceptor.

gRPC's fork handlers are switched off before grpc loads: a process forked from a worker thread
while gRPC threads are busy (pyroute2 forks to create a network namespace) otherwise dies with
SIGSEGV in those handlers. No child of qmprt uses gRPC, so nothing needs them. The variable is read
when grpc is first imported, which is why this sits in the package's ``__init__`` and why
``qmprt.cli`` imports this package before anything that imports grpc.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
