"""The rows as a set: the split by prompt, duplicates, label noise and length statistics."""

from __future__ import annotations

import random
import statistics

from ..pipeline.errors import ConfigError


def heldout_count(heldout: int | float, n_rows: int) -> int:
    """`data.heldout` as a row count: a count as given, or a fraction (0 < f < 1) of the rows, at least 1."""
    return heldout if isinstance(heldout, int) else max(1, round(heldout * n_rows))


def split_by_prompt(rows: list[dict], heldout: int | float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts, so no prompt is in both sets.

    `heldout` is a row count or a fraction of the rows (heldout_count). Prompts are shuffled with `seed` and
    moved to the held-out set until it has at least that many rows (a prompt with several rows may overshoot
    by the size of its group). Both sets keep the file order of their rows. A split that leaves fewer training
    rows than held-out ones is refused: that is not a training run.
    """
    n_heldout = heldout_count(heldout, len(rows))
    if n_heldout >= len(rows):
        raise ConfigError(
            f"params.yaml: data.heldout: {heldout} held-out rows leave no training rows out of "
            f"{len(rows)}; set data.heldout below {len(rows)}, or to a fraction such as 0.1")
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
    held = [r for r in rows if r["prompt"] in heldout_prompts]
    if len(train) < len(held):
        raise ConfigError(
            f"params.yaml: data.heldout: {heldout} holds out {len(held)} of {len(rows)} rows and leaves "
            f"{len(train)} to train on, fewer than held out; lower it (e.g. data.heldout: 0.1)")
    return train, held


def swap_labels(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], int]:
    """Flip the label of exactly round(fraction * len(rows)) rows chosen by `seed`: chosen and rejected swap
    places (their cut marks with them), or an unpaired row's label turns over."""
    assert 0.0 <= fraction <= 1.0, fraction  # data.label_noise, checked in schema.py
    n_swap = round(fraction * len(rows))
    swapped = set(random.Random(seed).sample(range(len(rows)), n_swap))
    out = []
    for i, row in enumerate(rows):
        if i in swapped and "label" in row:
            row = {**row, "label": not row["label"], "label_swapped": True}
        elif i in swapped:
            flipped = {k: v for k, v in row.items() if k not in ("chosen_cut", "rejected_cut")}
            flipped.update(chosen=row["rejected"], rejected=row["chosen"], label_swapped=True)
            flipped.update({f"{new}_cut": True for old, new in (("chosen", "rejected"), ("rejected", "chosen"))
                            if row.get(f"{old}_cut")})
            row = flipped
        out.append(row)
    return out, n_swap


def row_key(row: dict) -> tuple:
    """What makes two rows the same: prompt and answers (and an unpaired row's label)."""
    if "completion" in row:
        return row["prompt"], row["completion"], row["label"]
    return row["prompt"], row["chosen"], row["rejected"]


def find_duplicates(rows: list[dict]) -> list[tuple[int, int]]:
    """(index, index of its first occurrence) for every row that repeats an earlier row (row_key)."""
    first: dict[tuple, int] = {}
    repeats = []
    for i, row in enumerate(rows):
        key = row_key(row)
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    return repeats


def length_stats(rows: list[dict]) -> dict:
    """Mean/median answer length in words: chosen vs rejected (the length-bias check), or desirable vs
    undesirable completions of unpaired rows."""
    if not rows:
        return {}
    if "completion" in rows[0]:
        out = {}
        for name, label in (("desirable", True), ("undesirable", False)):
            words = [len(r["completion"].split()) for r in rows if r["label"] is label]
            out[f"{name}"] = len(words)
            if words:
                out[f"{name}_words_mean"] = round(statistics.fmean(words), 3)
                out[f"{name}_words_median"] = statistics.median(words)
        return out
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
