"""Template keys, what a template cannot hold, the store's bookkeeping (no VM here: the builds and
clones are tests/integration/test_template_pods.py and test_vm_snapshot.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qmprt import cgroups
from qmprt.errors import InvalidArgument
from qmprt.pod.templates import FILES, TemplateKey, Templates, check_templatable

KEY = TemplateKey("sha256:" + "a" * 64, "/img/a", "qcow2", "/k", "/i", "console=ttyS0", "q35", 1, 128, 1,
                  "qemu-system-x86_64", "QEMU emulator version 7.2", "tcg")


def templates(root: Path) -> Templates:
    return Templates(root, cgroups.detect(), "qmprt-unit", root / "run", run_as=lambda: None)


def publish(root: Path, key: TemplateKey, ready: bool = True) -> Path:
    directory = root / key.id
    directory.mkdir(parents=True)
    for name in FILES:
        (directory / name).write_bytes(name.encode())
    (directory / "key.json").write_text(json.dumps(dataclasses.asdict(key)))
    if ready:
        (directory / "ready").touch()
    return directory


def test_every_part_of_the_key_changes_its_id() -> None:
    changed = {dataclasses.replace(KEY, **{field.name: 2 if field.type == "int" else "other"}).id
               for field in dataclasses.fields(KEY)}
    assert len(changed) == len(dataclasses.fields(KEY)) and KEY.id not in changed
    assert KEY.id == dataclasses.replace(KEY).id and len(KEY.id) == 32


@pytest.mark.parametrize(
    ("fields", "words"),
    [({"shares": True}, "directory mounts"), ({"volumes": True}, "devices and volumes"), ({"hugepages": True}, "hugepages"),
     ({"numa_nodes": 2}, "guest NUMA"), ({"host_nodes": True}, "cpuset_mems"), ({"seed_format": "configdrive"}, "configdrive")],
)
def test_what_a_template_cannot_hold_is_refused_by_name(fields: dict[str, object], words: str) -> None:
    plain: dict[str, object] = dict(shares=False, volumes=False, hugepages=False, numa_nodes=1, host_nodes=False,
                                    seed_format="nocloud")
    check_templatable(**plain)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=words):
        check_templatable(**{**plain, **fields})  # type: ignore[arg-type]


def test_links_survive_the_templates_removal_and_prune_drops_the_unusable(tmp_path: Path) -> None:
    store = templates(tmp_path / "templates")
    assert store.ready(KEY) is None and store.list() == []
    publish(store.root, KEY)
    unfinished = publish(store.root, dataclasses.replace(KEY, cpus=2), ready=False)
    orphan = publish(store.root, dataclasses.replace(KEY, image_digest="sha256:" + "b" * 64))
    clone = tmp_path / "clone"
    clone.mkdir()
    links = store.link_into(KEY, clone)
    assert sorted(links) == sorted(FILES) and all(path.name.startswith("template-") for path in links.values())
    assert [entry["id"] for entry in store.list()] == sorted([KEY.id, orphan.name])
    store.prune([KEY.image_digest])
    assert [entry["id"] for entry in store.list()] == [KEY.id] and not unfinished.exists() and not orphan.exists()
    assert store.remove(KEY.id) and not store.remove(KEY.id) and not store.remove("../clone")
    assert links["ram"].read_bytes() == b"ram", "a clone's links outlive the template"
