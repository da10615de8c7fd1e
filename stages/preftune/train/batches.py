"""Batches of training: the order of an epoch's global batches (length-grouped, the same on every rank), how a
global batch is cut over ranks and accumulation steps, and sums over a split spread across the ranks."""

from __future__ import annotations

import random
from typing import Callable

import torch

from ..data.encoding import EVAL_BATCH


def batch_order(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True) -> list[list[int]]:
    """Shuffled batches of indices; with grouping, each batch holds sequences of similar length.

    Grouping sorts a shuffled window of 50 batches by length and cuts it into batches, then shuffles
    the batches: padding shrinks while batch composition still changes from epoch to epoch.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def global_batch(process, batch_size: int) -> int:
    """Items per optimizer step: batch_size per device x processes x accumulation steps."""
    return batch_size * process.world * process.accumulation


def rank_pieces(process, batch: list[int], per_rank: int) -> list[tuple[list[int], bool]]:
    """This rank's `per_rank` pieces of `batch` (cut into world x per_rank contiguous pieces; rank r takes pieces
    r, r + W, ...), each with whether it counts; an empty piece becomes a stand-in (the batch's first item) that
    counts zero, so that every rank runs the same number of forwards."""
    parts = process.world * per_rank
    size, extra = divmod(len(batch), parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + size + (k < extra))
    pieces = [batch[bounds[k]:bounds[k + 1]] for k in range(parts)]
    return [(p, True) if p else (batch[:1], False) for p in pieces[process.rank::process.world]]


@torch.no_grad()
def evaluate_sums(process, n: int, sums: Callable[[list[int]], dict[str, torch.Tensor]],
                  batch_size: int = EVAL_BATCH) -> dict:
    """Per-item statistics summed over items 0..n-1, which are spread over the ranks."""
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size * process.world):
        (idx, counted), = rank_pieces(process, list(range(start, min(start + batch_size * process.world, n))), 1)
        for name, value in sums(idx).items():
            totals[name] = totals.get(name, 0.0) + (float(value) if counted else 0.0)
    return process.sum(totals)
