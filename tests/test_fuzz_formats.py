"""A bounded mutation fuzz of dataset files in every supported format: whatever the bytes, loading gives rows of
text or one DataError line (file, where, what, what to do), never another exception; prepare on a mutated file
exits 2 with that line and writes nothing.

Each valid fixture is mutated deterministically (seeded): cut at random points, invalid UTF-8 spliced in, a BOM,
CRLF line ends, emptied, random bytes flipped, and format-aware edits: non-object rows, NaN and empty cells,
wrong nested types, a 1 MB row.
"""

import io
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_prepare import assert_one_line_error, run_prepare

from preftune.data.formats import load_pairs
from preftune.pipeline.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
SOURCES = ["pairs.yaml", "pairs.jsonl", "pairs.json", "pairs.csv", "conversational.jsonl", "sharegpt.json",
           "alpaca.json", "pairs.parquet"]


def valid_bytes(name: str) -> bytes:
    if name == "pairs.parquet":
        buf = io.BytesIO()
        pd.DataFrame(load_pairs(FIXTURES / "pairs.jsonl")).to_parquet(buf)
        return buf.getvalue()
    return (FIXTURES / name).read_bytes()


def structural(name: str, rng: random.Random) -> list[tuple[str, bytes]]:
    """Edits that keep the file parseable but break its rows."""
    if name.endswith(".parquet"):
        frames = {"nan cell": pd.DataFrame({"prompt": ["p", None], "chosen": ["a", "c"], "rejected": ["b", float("nan")]}),
                  "numbers": pd.DataFrame({"prompt": [1, 2], "chosen": [3, 4], "rejected": [5, 6]}),
                  "no columns": pd.DataFrame({"x": [1]})}
        out = []
        for label, frame in frames.items():
            buf = io.BytesIO()
            frame.to_parquet(buf)
            out.append((label, buf.getvalue()))
        return out
    if name.endswith(".csv"):
        return [("empty cell", b"prompt,chosen,rejected\np,,b\n"), ("NaN text", b"prompt,chosen,rejected\np,NaN,b\n"),
                ("huge row", b"prompt,chosen,rejected\n" + b"p" * 1_000_000 + b",a,b\n"),
                ("header only", b"prompt,chosen,rejected\n"), ("no header", b"p,a,b\n")]
    rows = (json.loads(l) for l in valid_bytes(name).decode("utf-8-sig").splitlines() if l.strip()) \
        if name.endswith(".jsonl") else None
    rows = list(rows) if rows is not None else (json.loads(valid_bytes(name)) if name.endswith(".json") else None)
    if rows is None:  # yaml
        return [("scalar rows", b"- 1\n- two\n"), ("date value", b"- {prompt: 2024-01-01, chosen: a, rejected: b}\n"),
                ("nested lists", b"- {prompt: [[1]], chosen: [2], rejected: [3]}\n"),
                ("huge row", b"- {prompt: p, chosen: " + b"a" * 1_000_000 + b", rejected: b}\n")]
    edits = {"non-object row": [1, "two", None], "nan": [{**rows[0], "chosen": float("nan")}],
             "wrong nested": [{k: ({"role": "user"} if isinstance(v, (list, dict)) else [v]) for k, v in rows[0].items()}],
             "messages of numbers": [{k: ([1, 2] if isinstance(v, (list, dict)) else 7) for k, v in rows[0].items()}],
             "huge row": [{k: (v if isinstance(v, (list, dict)) else v + "x" * 1_000_000) for k, v in rows[0].items()}],
             "row shuffled keys": [dict(reversed(list(r.items()))) for r in rng.sample(rows, len(rows))]}
    dump = (lambda rs: "".join(json.dumps(r) + "\n" for r in rs)) if name.endswith(".jsonl") else json.dumps
    return [(label, dump(rs).encode()) for label, rs in edits.items()]


def mutations(name: str) -> list[tuple[str, bytes]]:
    rng = random.Random(name)
    data = valid_bytes(name)
    out = [("empty", b""), ("bom", b"\xef\xbb\xbf" + data), ("crlf", data.replace(b"\n", b"\r\n"))]
    for _ in range(4):
        cut = rng.randrange(1, len(data))
        out.append((f"cut at {cut}", data[:cut]))
    for _ in range(3):
        at = rng.randrange(len(data))
        out.append((f"invalid utf-8 at {at}", data[:at] + b"\xff\xfe\xc3" + data[at:]))
    for _ in range(4):
        flipped = bytearray(data)
        for at in rng.sample(range(len(data)), 3):
            flipped[at] = rng.randrange(256)
        out.append(("bytes flipped", bytes(flipped)))
    return out + structural(name, rng)


CASES = [(name, label, blob) for name in SOURCES for label, blob in mutations(name)]


@pytest.mark.parametrize("name, label, blob", CASES, ids=[f"{n}:{l}" for n, l, _ in CASES])
def test_a_mutated_file_loads_as_text_rows_or_fails_in_one_line(tmp_path, name, label, blob):
    path = tmp_path / name
    path.write_bytes(blob)
    try:
        rows = load_pairs(path)
    except DataError as err:
        message = str(err)
        assert message.startswith(str(path)) and "\n" not in message and "; " in message, message
        return
    assert rows and all(isinstance(r[k], str) and r[k].strip() for r in rows for k in ("prompt", "chosen", "rejected"))


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.csv", "sharegpt.json", "pairs.parquet"])
def test_prepare_on_a_mutated_file_writes_nothing(tmp_path, name):
    label, blob = mutations(name)[4]  # a cut file
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / name).write_bytes(blob)
    assert_one_line_error(tmp_path, run_prepare(tmp_path, source=f"data/raw/{name}", heldout=1), name)
