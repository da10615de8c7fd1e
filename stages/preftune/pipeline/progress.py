"""Progress a log file shows. On a terminal a long loop draws tqdm's bar; where nobody watches one (a `dvc repro`
log, a CI job, a queued experiment) the bar is off, so the loop says instead, every `every` seconds, how far it is,
how fast it goes and about when it ends: "reference: reference log-probs: 120/400 batches, 2.1/s, about 2 min left"
(or "35 s each" below one a second).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

STAGE = {"name": "progress"}  # the running stage, set by params.start_stage: lines read "<stage>: ..."


def track(items: Iterable, desc: str, total: int | None = None, unit: str = "it", every: float = 30.0,
          quiet: bool = False) -> Iterator:
    """`items` with tqdm's bar on a terminal, or these log lines off one; `quiet`: neither (a rank other than 0,
    an inner loop)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    if quiet:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False)
        return
    log = logging.getLogger(STAGE["name"])
    start = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every:
            last, rate = now, done / (now - start)
            left = f", about {_duration((total - done) / rate)} left" if total and rate > 0 else ""
            pace = f"{rate:.1f}/s" if rate >= 1 else f"{_duration(1 / rate)} each"
            log.info("%s: %d%s %s, %s%s", desc, done, f"/{total}" if total else "", unit, pace, left)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
