"""Which downstream owns each sandbox and container id, persisted so a proxy restart loses nothing.

``ids.json`` in the proxy's state directory is rewritten atomically (tmp → fsync → rename) before a
RunPodSandbox or CreateContainer answer leaves the proxy, and after a removal. It is a cache, not the
truth: at start, and whenever an id is not in it, the proxy asks every reachable downstream for its
lists and takes what they say (``learn``). So an id made while the proxy was down, or a file lost with
the state directory, is found again; an id of a downstream that is down stays where the file put it.

Bounds: at most ``MAX_IDS`` entries (a node runs a few hundred pods); ids are checked for form before
they are looked up or stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

from qmprt import state
from qmprt.errors import InvalidArgument, NotFound, QmprtError, ResourceExhausted

log = logging.getLogger(__name__)

FILE = "ids.json"
VERSION = 1
MAX_IDS = 65536
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")  # containerd and qmprt: 64 hex digits
KINDS = ("sandboxes", "containers")


def check_id(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if not ID.fullmatch(value):
        raise InvalidArgument(f"{what} {value[:80]!r} is not an id a runtime gives out")
    return value


class Owners:
    """id → downstream name, for sandboxes and containers."""

    def __init__(self, state_dir: str, downstreams: tuple[str, ...]) -> None:
        self.directory = state.ensure_private_dir(state_dir)
        self.path = Path(self.directory) / FILE
        self.downstreams = downstreams
        self._ids: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self._added: dict[str, float] = {}  # id → when add() stored it (monotonic)
        self._lock = asyncio.Lock()
        state.remove_stale_temp_files(self.directory)
        self._read()

    def _read(self) -> None:
        try:
            document = state.read_json(self.path)
        except NotFound:
            return
        except (OSError, ValueError, QmprtError) as err:
            log.warning("%s is unreadable (%s): the ids come from the downstreams' lists instead", self.path, err)
            return
        if not isinstance(document, dict) or document.get("version") != VERSION:
            log.warning("%s has an unknown format: the ids come from the downstreams' lists instead", self.path)
            return
        for kind in KINDS:
            entries = document.get(kind, {})
            if isinstance(entries, dict):
                self._ids[kind] = {
                    key: value for key, value in entries.items()
                    if isinstance(key, str) and ID.fullmatch(key) and value in self.downstreams
                }

    def owner(self, kind: str, identifier: str) -> str | None:
        return self._ids[kind].get(identifier)

    def count(self) -> int:
        return sum(len(entries) for entries in self._ids.values())

    async def add(self, kind: str, identifier: str, downstream: str) -> None:
        async with self._lock:
            if self._ids[kind].get(identifier) == downstream:
                return
            if self.count() >= MAX_IDS:
                raise ResourceExhausted(f"the proxy tracks {MAX_IDS} ids already; remove pods first")
            self._ids[kind][identifier] = downstream
            self._added[identifier] = time.monotonic()
            await self._write()

    async def remove(self, kind: str, identifier: str) -> None:
        async with self._lock:
            self._added.pop(identifier, None)
            if self._ids[kind].pop(identifier, None) is not None:
                await self._write()

    def by_prefix(self, kind: str, prefix: str) -> str | None:
        """The owner of the one id that starts with ``prefix`` (crictl takes short ids), if one does."""
        owners = {owner for key, owner in self._ids[kind].items() if key.startswith(prefix)}
        return owners.pop() if len(owners) == 1 else None

    async def learn(self, downstream: str, kind: str, listed: list[str], started: float) -> None:
        """``listed`` is ``downstream``'s whole list of ``kind``, asked for at ``started`` (monotonic):
        those ids are its own; an id the map gave it and it no longer lists is gone, unless the map
        got it after the list was asked for (a RunPodSandbox that crossed the list)."""
        async with self._lock:
            entries = self._ids[kind]
            changed = False
            now_listed = set(listed)
            for identifier in [key for key, owner in entries.items() if owner == downstream and key not in now_listed]:
                if self._added.get(identifier, 0.0) < started:
                    del entries[identifier]
                    self._added.pop(identifier, None)
                    changed = True
            for identifier in listed:
                if entries.get(identifier) != downstream and ID.fullmatch(identifier) and self.count() < MAX_IDS:
                    entries[identifier] = downstream
                    changed = True
            if changed:
                await self._write()

    async def _write(self) -> None:
        document = {"version": VERSION, **{kind: dict(self._ids[kind]) for kind in KINDS}}
        await asyncio.to_thread(state.write_json_atomic, self.path, document)
