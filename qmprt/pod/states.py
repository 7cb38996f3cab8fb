"""The state machines of sandboxes and containers.

Sandbox::

    READY → NOTREADY          (StopPodSandbox, or its network namespace or wiring vanished)

Container::

    CREATED → RUNNING → EXITED
    CREATED → EXITED          (StartContainer failed after the VM was prepared)
    any     → UNKNOWN         (recovery found a container whose VM it could not judge)

The CRI layer maps these one to one onto the CRI enums in a single function.
"""

from __future__ import annotations

import enum

from qmprt.errors import FailedPrecondition


class SandboxState(str, enum.Enum):
    READY = "ready"
    NOTREADY = "notready"


class ContainerState(str, enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


_SANDBOX_TRANSITIONS = {
    SandboxState.READY: {SandboxState.NOTREADY},
    SandboxState.NOTREADY: set(),
}

_CONTAINER_TRANSITIONS = {
    ContainerState.CREATED: {ContainerState.RUNNING, ContainerState.EXITED, ContainerState.UNKNOWN},
    ContainerState.RUNNING: {ContainerState.EXITED, ContainerState.UNKNOWN},
    ContainerState.EXITED: {ContainerState.UNKNOWN},
    ContainerState.UNKNOWN: {ContainerState.EXITED},
}


def check_sandbox_transition(current: SandboxState, new: SandboxState) -> None:
    if new != current and new not in _SANDBOX_TRANSITIONS[current]:
        raise FailedPrecondition(f"a {current.value} sandbox cannot become {new.value}")


def check_container_transition(current: ContainerState, new: ContainerState) -> None:
    if new != current and new not in _CONTAINER_TRANSITIONS[current]:
        raise FailedPrecondition(f"a {current.value} container cannot become {new.value}")
