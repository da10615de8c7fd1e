"""Sharing the machine's cores with the other stages running on it: by waiting, never by running fewer threads.

Two torch processes that each use every core slow each other several-fold on a small machine: their OpenMP pools
oversubscribe the cores and spin-wait on each other (measured on 2 cores: the `dpo` stage 11 s alone, 44 s each
with a second copy running, which is what `dvc queue start -j 2` does). Shrinking each one's thread pool would avoid
that, but the thread count changes the bits (numerics.py). So a stage holds one lock per thread it runs, out of one
per CPU of the machine, and a stage that finds too few free waits until they are, and says so. The locks are flock()s
on files in a machine-wide folder: the kernel releases them when the process ends, however it ends, so a killed
stage leaves nothing behind.

Ranks under a launcher do not wait: the launcher placed them, and a rank waiting for a core that its own job's
other rank holds would hang the job at its first collective.
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
import time
from pathlib import Path

FOLDER = Path(tempfile.gettempdir()) / "preftune-cores"  # one lock file per CPU of the machine
POLL_S = 0.5
_held: list[int] = []  # this process's locked file descriptors, held until it exits


def _try_lock(slot: int) -> int | None:
    fd = os.open(FOLDER / f"cpu{slot}", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def hold(threads: int, waiting=lambda message: None) -> float:
    """Hold `threads` of the machine's CPUs (all of them on a smaller machine) until this process ends; while
    other stages hold too many, call `waiting(message)` once and wait. Returns the seconds waited."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or _held:
        return 0.0
    slots = os.cpu_count() or 1
    need = min(threads, slots)
    try:
        FOLDER.mkdir(mode=0o777, parents=True, exist_ok=True)
    except OSError:
        return 0.0  # no shared folder to coordinate through: run without waiting, as torch would
    start, told, backoff = time.monotonic(), False, random.Random()  # own generator: the seeded global stays as it is
    while True:
        got: list[int] = []
        try:
            for slot in range(slots):
                fd = _try_lock(slot)
                if fd is not None:
                    got.append(fd)
                    if len(got) == need:
                        _held.extend(got)
                        return time.monotonic() - start
        except OSError:  # another user's lock files: coordinate with nobody rather than fail the stage
            for fd in got:
                os.close(fd)
            return 0.0
        for fd in got:  # too few free: give back the partial set, so two waiters cannot starve each other
            os.close(fd)
        if not told:
            waiting(f"waiting for {need} free core{'s' * (need > 1)} (other stages on this machine hold "
                    f"{slots - len(got)} of {slots})")
            told = True
        time.sleep(POLL_S * (0.5 + backoff.random()))
