"""The rows as a set: the split by prompt, duplicates, label noise and length statistics."""

from __future__ import annotations

import hashlib
import random
import statistics
from collections.abc import Hashable, Sequence

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
    train, held = split_indices([row["prompt"] for row in rows], heldout, seed)
    return [rows[i] for i in train], [rows[i] for i in held]


def split_indices(prompts: Sequence[Hashable], heldout: int | float, seed: int) -> tuple[list[int], list[int]]:
    """split_by_prompt on the rows' prompts alone (or any stand-in that is equal exactly where the prompts are,
    such as prompt_key): the indices of the training rows and of the held-out rows, each in file order."""
    n_heldout = heldout_count(heldout, len(prompts))
    if n_heldout >= len(prompts):
        raise ConfigError(
            f"params.yaml: data.heldout: {heldout} held-out rows leave no training rows out of "
            f"{len(prompts)}; set data.heldout below {len(prompts)}, or to a fraction such as 0.1")
    order = list(dict.fromkeys(prompts))
    random.Random(seed).shuffle(order)
    group_size: dict = {}
    for prompt in prompts:
        group_size[prompt] = group_size.get(prompt, 0) + 1
    heldout_prompts, count = set(), 0
    for prompt in order:
        if count >= n_heldout:
            break
        heldout_prompts.add(prompt)
        count += group_size[prompt]
    train = [i for i, p in enumerate(prompts) if p not in heldout_prompts]
    held = [i for i, p in enumerate(prompts) if p in heldout_prompts]
    if len(train) < len(held):
        raise ConfigError(
            f"params.yaml: data.heldout: {heldout} holds out {len(held)} of {len(prompts)} rows and leaves "
            f"{len(train)} to train on, fewer than held out; lower it (e.g. data.heldout: 0.1)")
    return train, held


def prompt_key(prompt: str) -> bytes:
    """A 16-byte stand-in for a prompt (BLAKE2b): what the split needs of a row, without keeping its text."""
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()


def swap_labels(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], int]:
    """Flip the label of exactly round(fraction * len(rows)) rows chosen by `seed`: chosen and rejected swap
    places (their cut marks with them), or an unpaired row's label turns over."""
    swapped = swapped_indices(len(rows), fraction, seed)
    return [swap_label(row) if i in swapped else row for i, row in enumerate(rows)], len(swapped)


def swapped_indices(n: int, fraction: float, seed: int) -> set[int]:
    """The round(fraction * n) of n training rows whose labels swap_labels flips."""
    assert 0.0 <= fraction <= 1.0, fraction  # data.label_noise, checked in schema.py
    return set(random.Random(seed).sample(range(n), round(fraction * n)))


def swap_label(row: dict) -> dict:
    """The row with its label flipped: chosen and rejected swap places (their cut marks with them), or an
    unpaired row's label turns over."""
    if "label" in row:
        return {**row, "label": not row["label"], "label_swapped": True}
    flipped = {k: v for k, v in row.items() if k not in ("chosen_cut", "rejected_cut")}
    flipped.update(chosen=row["rejected"], rejected=row["chosen"], label_swapped=True)
    flipped.update({f"{new}_cut": True for old, new in (("chosen", "rejected"), ("rejected", "chosen"))
                    if row.get(f"{old}_cut")})
    return flipped


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
    return word_stats([answer_words(r) for r in rows])


def answer_words(row: dict) -> tuple:
    """What length_stats needs of a row: (chosen words, rejected words), or (completion words, label)."""
    if "completion" in row:
        return len(row["completion"].split()), row["label"]
    return len(row["chosen"].split()), len(row["rejected"].split())


def swapped_words(words: tuple) -> tuple:
    """answer_words of the row after swap_label."""
    first, second = words
    return (first, not second) if isinstance(second, bool) else (second, first)


def word_stats(words: list[tuple]) -> dict:
    """length_stats from each row's answer_words."""
    if not words:
        return {}
    if isinstance(words[0][1], bool):
        out = {}
        for name, label in (("desirable", True), ("undesirable", False)):
            counts = [n for n, is_good in words if is_good is label]
            out[f"{name}"] = len(counts)
            if counts:
                out[f"{name}_words_mean"] = round(statistics.fmean(counts), 3)
                out[f"{name}_words_median"] = statistics.median(counts)
        return out
    chosen = [c for c, _ in words]
    rejected = [r for _, r in words]
    return {
        "chosen_words_mean": round(statistics.fmean(chosen), 3),
        "rejected_words_mean": round(statistics.fmean(rejected), 3),
        "chosen_words_median": statistics.median(chosen),
        "rejected_words_median": statistics.median(rejected),
        "chosen_longer_share": round(sum(c > r for c, r in zip(chosen, rejected)) / len(words), 4),
    }


def count_by(rows: list[dict], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if key in row:
            counts[row[key]] = counts.get(row[key], 0) + 1
    return dict(sorted(counts.items()))
