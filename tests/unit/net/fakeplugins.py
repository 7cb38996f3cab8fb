"""Fake CNI plugins: small shell scripts that record what they were given and answer from files.

Each run appends a directory ``<seq>-<plugin>-<COMMAND>`` to the record dir with the plugin's
stdin and its ``CNI_*`` environment (written aside and renamed, so a record is whole once visible). The answer for a command is ``<plugin>.<COMMAND>.out`` (printed)
and ``<plugin>.<COMMAND>.rc`` (exit status) from the answers dir; a plugin with neither prints nothing
and succeeds. ``<plugin>.<COMMAND>.sleep`` makes it hang first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = """#!/bin/sh
stdin=$(cat)
seq=$(ls "{records}" | wc -l)
dir="{records}/$(printf %03d "$seq")-{name}-$CNI_COMMAND"
mkdir -p "$dir.tmp"
printf '%s' "$stdin" > "$dir.tmp/stdin"
env | grep '^CNI_' | sort > "$dir.tmp/env"
mv "$dir.tmp" "$dir"
answer="{answers}/{name}.$CNI_COMMAND"
[ -f "$answer.sleep" ] && sleep "$(cat "$answer.sleep")"
[ -f "$answer.out" ] && cat "$answer.out"
[ -f "$answer.rc" ] && exit "$(cat "$answer.rc")"
exit 0
"""


@dataclass(frozen=True)
class Call:
    plugin: str
    command: str
    stdin: dict[str, Any]
    env: dict[str, str]


@dataclass
class FakePlugins:
    bin_dir: Path
    records: Path
    answers: Path

    @classmethod
    def make(cls, root: Path) -> FakePlugins:
        fakes = cls(root / "bin", root / "records", root / "answers")
        for directory in (fakes.bin_dir, fakes.records, fakes.answers):
            directory.mkdir(parents=True)
        return fakes

    def install(self, *names: str) -> None:
        for name in names:
            script = self.bin_dir / name
            script.write_text(SCRIPT.format(records=self.records, answers=self.answers, name=name))
            script.chmod(0o755)

    def answer(self, name: str, command: str, output: Any = None, rc: int = 0, sleep: float = 0) -> None:
        base = self.answers / f"{name}.{command}"
        if output is not None:
            base.with_name(base.name + ".out").write_text(output if isinstance(output, str) else json.dumps(output))
        if rc:
            base.with_name(base.name + ".rc").write_text(str(rc))
        if sleep:
            base.with_name(base.name + ".sleep").write_text(str(sleep))

    def calls(self) -> list[Call]:
        found = []
        for directory in sorted(self.records.iterdir()):
            if directory.suffix == ".tmp":
                continue  # a run killed before its record was complete
            _, plugin, command = directory.name.split("-", 2)
            stdin_text = (directory / "stdin").read_text()
            env = dict(line.split("=", 1) for line in (directory / "env").read_text().splitlines() if "=" in line)
            found.append(Call(plugin, command, json.loads(stdin_text) if stdin_text else {}, env))
        return found

    def started(self, plugin: str, command: str) -> bool:
        """Whether a run began (its record may still be being written)."""
        return any(directory.name.endswith(f"-{plugin}-{command}") for directory in self.records.iterdir())

    def clear(self) -> None:
        for directory in self.records.iterdir():
            for entry in directory.iterdir():
                entry.unlink()
            directory.rmdir()


def write_conflist(conf_dir: Path, document: dict[str, Any], name: str = "10-net.conflist") -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / name
    path.write_text(json.dumps(document))
    os.utime(path)
    return path
