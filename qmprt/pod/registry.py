"""The sandboxes and containers a runtime knows: by id, by name, and the lookups crictl users type.

The registry only indexes objects; it never touches a VM, a file or the network. Names are
reserved before an object exists (so two concurrent creates of one name cannot both win) and
released by the undo step of a create that failed. Changes to its objects are announced on its
event bus (``events``), each with the pod as the registry holds it then (``qmprt.pod.events``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TypeVar

from qmprt.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from qmprt.pod.events import ContainerEvent, EventBus, EventType
from qmprt.pod.specs import ContainerSpec, SandboxSpec, metadata_bytes
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.states import ContainerState, SandboxState

log = logging.getLogger(__name__)

T = TypeVar("T", Sandbox, Container)
SandboxName = tuple[str, str, str, int]  # name, namespace, uid, attempt
ContainerName = tuple[str, str, int]  # sandbox id, name, attempt
# Labels and annotations of every sandbox and container together: the list answers kubelet relists
# every second carry all of them, and must stay well inside gRPC's 16 MiB message.
METADATA_BUDGET_BYTES = 8 << 20


def lookup(objects: Mapping[str, T], object_id: str, kind: str) -> T:
    """By full id or unambiguous prefix, as crictl users type them."""
    if not object_id:
        raise InvalidArgument(f"a {kind} id is required")
    found = objects.get(object_id)
    if found is not None:
        return found
    matches = [value for key, value in objects.items() if key.startswith(object_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f"{kind} {object_id!r} does not exist")
    raise InvalidArgument(f"{kind} id prefix {object_id!r} is ambiguous")


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def sandbox_name(spec: SandboxSpec) -> SandboxName:
    metadata = spec.metadata
    return (metadata.name, metadata.namespace, metadata.uid, metadata.attempt)


def container_name(sandbox_id: str, spec: ContainerSpec) -> ContainerName:
    return (sandbox_id, spec.metadata.name, spec.metadata.attempt)


def select(
    objects: Iterable[T], id: str, state: SandboxState | ContainerState | None, labels: Mapping[str, str] | None
) -> list[T]:
    """The objects whose id starts with ``id``, in ``state`` (None: any), carrying all ``labels``."""
    return [
        found for found in list(objects)
        if found.id.startswith(id)
        and (state is None or found.status.state == state)
        and (not labels or labels_match(found.spec.labels, labels))
    ]


class Registry:
    def __init__(self) -> None:
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self._sandbox_names: dict[SandboxName, str] = {}
        self._container_names: dict[ContainerName, str] = {}
        self.events = EventBus()

    # -- names ------------------------------------------------------------------------------------------
    def reserve_sandbox_name(self, spec: SandboxSpec, sandbox_id: str) -> SandboxName:
        key = sandbox_name(spec)
        if key in self._sandbox_names:
            raise AlreadyExists(
                f"sandbox name {key[0]}/{key[1]} attempt {key[3]} is already used by {self._sandbox_names[key]}"
            )
        self._sandbox_names[key] = sandbox_id
        return key

    def release_sandbox_name(self, key: SandboxName) -> None:
        self._sandbox_names.pop(key, None)

    def check_container_name(self, sandbox_id: str, spec: ContainerSpec) -> ContainerName:
        key = container_name(sandbox_id, spec)
        if key in self._container_names:
            raise AlreadyExists(
                f"container name {key[1]} attempt {key[2]} is already used in this "
                f"sandbox by {self._container_names[key][:12]}"
            )
        return key

    def reserve_container_name(self, key: ContainerName, container_id: str) -> None:
        self._container_names[key] = container_id

    def release_container_name(self, key: ContainerName) -> None:
        self._container_names.pop(key, None)

    # -- objects ----------------------------------------------------------------------------------------
    def add_sandbox(self, sandbox: Sandbox) -> None:
        """Index a sandbox (its name may already be reserved by the create that made it)."""
        self._sandbox_names[sandbox_name(sandbox.spec)] = sandbox.id
        self.sandboxes[sandbox.id] = sandbox

    def add_container(self, container: Container) -> None:
        self._container_names[container_name(container.sandbox_id, container.spec)] = container.id
        self.containers[container.id] = container

    def forget_sandbox(self, sandbox: Sandbox) -> bool:
        """Unindex a sandbox; False when it was not indexed (a concurrent remove got there first)."""
        self._sandbox_names.pop(sandbox_name(sandbox.spec), None)
        return self.sandboxes.pop(sandbox.id, None) is not None

    def forget_container(self, container: Container) -> bool:
        self._container_names.pop(container_name(container.sandbox_id, container.spec), None)
        return self.containers.pop(container.id, None) is not None

    def sandbox(self, sandbox_id: str) -> Sandbox:
        return lookup(self.sandboxes, sandbox_id, "sandbox")

    def container(self, container_id: str) -> Container:
        return lookup(self.containers, container_id, "container")

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return [c for c in list(self.containers.values()) if c.sandbox_id == sandbox_id]

    def all_containers(self) -> list[Container]:
        return list(self.containers.values())

    def running_count(self) -> int:
        return sum(1 for c in list(self.containers.values()) if c.status.state == ContainerState.RUNNING)

    def image_in_use(self, digest: str) -> bool:
        return any(container.record.image_digest == digest for container in self.containers.values())

    # -- events -----------------------------------------------------------------------------------------
    def container_event(self, kind: EventType, container: Container) -> None:
        """Announce ``kind`` for ``container``, with its pod as it is now (call it right after the change)."""
        sandbox = self.sandboxes.get(container.sandbox_id)
        if sandbox is None:
            log.warning("no %s event for container %s: its sandbox is gone", kind.value, container.id[:12])
            return
        self._publish(kind, container.id, sandbox)

    def sandbox_event(self, kind: EventType, sandbox: Sandbox) -> None:
        """Announce ``kind`` for the sandbox itself (its id as the container id, as containerd does)."""
        self._publish(kind, sandbox.id, sandbox)

    def _publish(self, kind: EventType, object_id: str, sandbox: Sandbox) -> None:
        containers = tuple(c.info() for c in self.containers_of(sandbox.id))
        self.events.publish(ContainerEvent(object_id, kind, time.time_ns(), sandbox.info(), containers))

    # -- lists ------------------------------------------------------------------------------------------
    def find_sandboxes(
        self, id: str = "", state: SandboxState | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Sandbox]:
        return select(self.sandboxes.values(), id, state, labels)

    def find_containers(self, id: str = "", state: ContainerState | None = None, sandbox_id: str = "",
                        labels: Mapping[str, str] | None = None) -> list[Container]:
        chosen = select(self.containers.values(), id, state, labels)
        return [c for c in chosen if c.sandbox_id.startswith(sandbox_id)]

    def check_metadata_budget(self, adding: int) -> None:
        used = sum(metadata_bytes(s.spec.labels, s.spec.annotations) for s in list(self.sandboxes.values()))
        used += sum(metadata_bytes(c.spec.labels, c.spec.annotations) for c in list(self.containers.values()))
        if used + adding > METADATA_BUDGET_BYTES:
            raise ResourceExhausted(
                f"the labels and annotations of all pods and containers would add up to {used + adding} bytes; "
                f"qmprt keeps them under {METADATA_BUDGET_BYTES} bytes so that listing them always fits one "
                "answer: remove pods, or shrink their annotations"
            )
