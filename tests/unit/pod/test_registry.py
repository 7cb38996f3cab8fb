"""The registry: ids, names, lookups and lists of sandboxes and containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmprt.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from qmprt.pod import registry as registry_module
from qmprt.pod.registry import Registry
from qmprt.pod.states import ContainerState, SandboxState

from .fakes import container_spec, make_container, make_sandbox, sandbox_spec


def test_lookup_by_full_id_or_unambiguous_prefix(tmp_path: Path) -> None:
    registry = Registry()
    one = make_sandbox(tmp_path, sandbox_id="ab" + "0" * 62)
    two = make_sandbox(tmp_path, sandbox_spec("db"), sandbox_id="ac" + "0" * 62)
    registry.add_sandbox(one)
    registry.add_sandbox(two)
    assert registry.sandbox(one.id) is one
    assert registry.sandbox("ac") is two
    with pytest.raises(InvalidArgument, match="ambiguous"):
        registry.sandbox("a")
    with pytest.raises(NotFound, match="does not exist"):
        registry.sandbox("ff")
    with pytest.raises(InvalidArgument, match="is required"):
        registry.container("")


def test_a_sandbox_name_is_reserved_until_released(tmp_path: Path) -> None:
    registry = Registry()
    spec = sandbox_spec()
    key = registry.reserve_sandbox_name(spec, "first")
    with pytest.raises(AlreadyExists, match="web/default attempt 0 is already used by first"):
        registry.reserve_sandbox_name(spec, "second")
    registry.release_sandbox_name(key)
    assert registry.reserve_sandbox_name(spec, "second") == key


def test_container_names_are_per_sandbox_and_go_with_the_container(tmp_path: Path) -> None:
    registry = Registry()
    sandbox = make_sandbox(tmp_path)
    other = make_sandbox(tmp_path, sandbox_spec("db"))
    container = make_container(sandbox)
    registry.add_container(container)
    with pytest.raises(AlreadyExists, match="container name app attempt 0"):
        registry.check_container_name(sandbox.id, container_spec())
    registry.check_container_name(other.id, container_spec())  # another pod may use the name
    registry.forget_container(container)
    assert registry.check_container_name(sandbox.id, container_spec()) == (sandbox.id, "app", 0)
    assert container.id not in registry.containers


def test_forgetting_a_sandbox_frees_its_name(tmp_path: Path) -> None:
    registry = Registry()
    sandbox = make_sandbox(tmp_path)
    registry.add_sandbox(sandbox)
    with pytest.raises(AlreadyExists):
        registry.reserve_sandbox_name(sandbox.spec, "again")
    registry.forget_sandbox(sandbox)
    assert registry.sandboxes == {}
    registry.reserve_sandbox_name(sandbox.spec, "again")


def test_find_filters_by_id_prefix_state_labels_and_sandbox(tmp_path: Path) -> None:
    registry = Registry()
    web = make_sandbox(tmp_path, sandbox_spec("web", labels={"app": "web"}))
    db = make_sandbox(tmp_path, sandbox_spec("db", labels={"app": "db"}))
    for sandbox in (web, db):
        registry.add_sandbox(sandbox)
    db.set_state(SandboxState.NOTREADY)
    front = make_container(web, container_spec("front", labels={"tier": "front"}))
    back = make_container(web, container_spec("back", labels={"tier": "back"}))
    store = make_container(db, container_spec("store"))
    for container in (front, back, store):
        registry.add_container(container)
    back.update(ContainerState.RUNNING)
    assert registry.find_sandboxes(labels={"app": "web"}) == [web]
    assert registry.find_sandboxes(state=SandboxState.NOTREADY) == [db]
    assert registry.find_sandboxes(id=db.id[:8]) == [db]
    assert set(registry.find_containers(sandbox_id=web.id[:6])) == {front, back}
    assert registry.find_containers(state=ContainerState.RUNNING) == [back]
    assert registry.find_containers(labels={"tier": "front"}) == [front]
    assert registry.find_containers(id=store.id) == [store]
    assert set(registry.containers_of(web.id)) == {front, back}
    assert registry.running_count() == 1


def test_image_in_use(tmp_path: Path) -> None:
    registry = Registry()
    sandbox = make_sandbox(tmp_path)
    registry.add_container(make_container(sandbox, image_digest="sha256:" + "1" * 64))
    assert registry.image_in_use("sha256:" + "1" * 64)
    assert not registry.image_in_use("sha256:" + "2" * 64)


def test_labels_and_annotations_stay_within_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "METADATA_BUDGET_BYTES", 100)
    registry = Registry()
    sandbox = make_sandbox(tmp_path, sandbox_spec(annotations={"k": "v" * 60}))
    registry.add_sandbox(sandbox)
    registry.check_metadata_budget(39)
    with pytest.raises(ResourceExhausted, match="would add up to 101 bytes"):
        registry.check_metadata_budget(40)
