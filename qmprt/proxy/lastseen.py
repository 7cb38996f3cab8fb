"""Each downstream's last whole lists of sandboxes and containers, kept on disk.

They stand in for a downstream that is down: the merged lists still show its pods as last seen, so
kubelet does not take them for gone and try to recreate them (a qmprt that restarts has not stopped
its VMs). Kept in ``lists.json`` beside ``ids.json`` so that this holds across a proxy restart too;
the file is rewritten (atomically, off the event loop) only when an id or a state changed, not on
each of kubelet's once-a-second lists. Items are stored as the CRI's own protobuf encoding, base64.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt import state
from qmprt.errors import QmprtError

log = logging.getLogger(__name__)

FILE = "lists.json"
VERSION = 1
MAX_ITEMS = 65536
MESSAGES: dict[str, Any] = {"sandboxes": cri.PodSandbox, "containers": cri.Container}


def _summary(items: list[Any]) -> frozenset[tuple[str, int]]:
    return frozenset((item.id, item.state) for item in items)


class LastSeen:
    def __init__(self, directory: Path, downstreams: tuple[str, ...]) -> None:
        self.path = directory / FILE
        self._items: dict[tuple[str, str], list[Any]] = {}
        self._lock = asyncio.Lock()
        self._read(downstreams)

    def _read(self, downstreams: tuple[str, ...]) -> None:
        try:
            document = state.read_json(self.path)
            if not isinstance(document, dict) or document.get("version") != VERSION:
                raise ValueError("unknown format")
            for name in downstreams:
                for kind, message in MESSAGES.items():
                    encoded = document.get("lists", {}).get(name, {}).get(kind, [])[:MAX_ITEMS]
                    self._items[(name, kind)] = [message.FromString(base64.b64decode(text)) for text in encoded]
        except (QmprtError, OSError, ValueError, TypeError, AttributeError) as err:
            if self.path.exists():
                log.warning("%s is unreadable (%s): downstreams that are down list nothing until seen", self.path, err)
            self._items = {}

    def items(self, downstream: str, kind: str) -> list[Any]:
        return self._items.get((downstream, kind), [])

    def all_sandboxes(self) -> list[tuple[str, Any]]:
        return [(name, item) for (name, kind), items in self._items.items() if kind == "sandboxes" for item in items]

    async def update(self, downstream: str, kind: str, items: list[Any]) -> None:
        items = items[:MAX_ITEMS]
        async with self._lock:
            before = self._items.get((downstream, kind))
            self._items[(downstream, kind)] = items
            if before is None or _summary(before) != _summary(items):
                await asyncio.to_thread(state.write_json_atomic, self.path, self._document())

    def _document(self) -> dict[str, Any]:
        lists: dict[str, dict[str, list[str]]] = {}
        for (name, kind), items in self._items.items():
            lists.setdefault(name, {})[kind] = [base64.b64encode(item.SerializeToString()).decode() for item in items]
        return {"version": VERSION, "lists": lists}
