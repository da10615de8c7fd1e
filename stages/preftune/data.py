"""Prepared-data files, the split by prompt, label noise and length statistics."""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
from pathlib import Path

from .errors import ConfigError


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


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line, keys in insertion order: byte-identical for identical rows."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str | Path, obj) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def split_by_prompt(rows: list[dict], n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts, so no prompt is in both sets.

    Prompts are shuffled with `seed` and moved to the held-out set until it has at least
    `n_heldout` pairs (a prompt with several pairs may overshoot by the size of its group).
    Both sets keep the file order of their rows.
    """
    if n_heldout < 1:
        raise ConfigError(f"params.yaml: data.heldout: {n_heldout} must be at least 1; set it to e.g. 50")
    if n_heldout >= len(rows):
        raise ConfigError(
            f"params.yaml: data.heldout: {n_heldout} held-out pairs leave no training pairs out of "
            f"{len(rows)}; set data.heldout below {len(rows)}")
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    random.Random(seed).shuffle(prompts)
    group_size: dict[str, int] = {}
    for row in rows:
        group_size[row["prompt"]] = group_size.get(row["prompt"], 0) + 1
    heldout_prompts, count = set(), 0
    for prompt in prompts:
        if count >= n_heldout:
            break
        heldout_prompts.add(prompt)
        count += group_size[prompt]
    train = [r for r in rows if r["prompt"] not in heldout_prompts]
    heldout = [r for r in rows if r["prompt"] in heldout_prompts]
    if not train:
        raise ConfigError(
            f"params.yaml: data.heldout: {n_heldout} takes every prompt ({len(prompts)} distinct); "
            "lower it so some prompts remain for training")
    return train, heldout


def swap_labels(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], int]:
    """Swap chosen and rejected in exactly round(fraction * len(rows)) rows chosen by `seed`."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"params.yaml: data.label_noise: {fraction} is not a fraction; use a value in [0, 1]")
    n_swap = round(fraction * len(rows))
    swapped = set(random.Random(seed).sample(range(len(rows)), n_swap))
    out = []
    for i, row in enumerate(rows):
        if i in swapped:
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"], "label_swapped": True}
        out.append(row)
    return out, n_swap


def find_duplicates(rows: list[dict]) -> list[tuple[int, int]]:
    """(index, index of its first occurrence) for every row whose prompt, chosen and rejected repeat an earlier row."""
    first: dict[tuple, int] = {}
    repeats = []
    for i, row in enumerate(rows):
        key = (row["prompt"], row["chosen"], row["rejected"])
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    return repeats


def length_stats(rows: list[dict]) -> dict:
    """Mean/median response length in words of chosen vs rejected (the length-bias check)."""
    if not rows:
        return {}
    chosen = [len(r["chosen"].split()) for r in rows]
    rejected = [len(r["rejected"].split()) for r in rows]
    return {
        "chosen_words_mean": round(statistics.fmean(chosen), 3),
        "rejected_words_mean": round(statistics.fmean(rejected), 3),
        "chosen_words_median": statistics.median(chosen),
        "rejected_words_median": statistics.median(rejected),
        "chosen_longer_share": round(sum(c > r for c, r in zip(chosen, rejected)) / len(rows), 4),
    }


def count_by(rows: list[dict], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if key in row:
            counts[row[key]] = counts.get(row[key], 0) + 1
    return dict(sorted(counts.items()))
