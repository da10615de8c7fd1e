"""Files the stages write and read: atomic writes, JSON lines and JSON."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w"):
    """Write `path` through a temporary file next to it that replaces it only once complete: a reader, or
    a run killed half-way, never sees (or leaves behind) half a file. Text modes write UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object per line, keys in insertion order: byte-identical for identical rows."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(jsonl_line(row))


def jsonl_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """read_jsonl one row at a time: memory holds one line."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_optional_jsonl(path: str | Path) -> list[dict]:
    """Rows of a file that exists only for some sources (the built-in task's checks): [] when it is absent."""
    return read_jsonl(path) if os.path.exists(path) else []


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str | Path, obj) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
