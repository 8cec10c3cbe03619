"""Which ascend_ext paths actually ran, across vLLM's worker processes.

With ``ASCEND_EXT_TRACE=<file>`` set, every process appends "<pid> <event>" the first
time it runs each integration path (attention, MLA decode/prefill, expert-parallel
MoE). Tests use it to prove that workers they cannot inspect used our code.
"""

from __future__ import annotations

import os

_seen: set[str] = set()


def enabled() -> bool:
    return bool(os.environ.get("ASCEND_EXT_TRACE"))


def note(event: str) -> None:
    path = os.environ.get("ASCEND_EXT_TRACE")
    if not path or event in _seen:
        return
    _seen.add(event)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {event}\n")


def read(path: str) -> list[tuple[int, str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(pid), event) for pid, event in (line.split(maxsplit=1) for line in f.read().split("\n") if line)]
