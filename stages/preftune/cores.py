"""Sharing the CPU cores with the other stages running on this machine.

Two torch processes that each use every core (torch's default) slow each other several-fold on a small machine:
their OpenMP pools oversubscribe the cores and spin-wait on each other. Measured on a 2-core machine: the `dpo`
stage took 11 s alone and 44 s each with a second copy running. This is what `dvc queue start -j 2` does.

So every stage registers its process in a machine-wide folder and sizes torch's thread pool to its share,
cores // stages running. A training loop looks again at most once a second and resizes (torch.set_num_threads):
when a neighbour starts, both shrink; when it ends, the survivor takes its cores back. Alone, a stage keeps every
core, as before. An explicit OMP_NUM_THREADS is a choice someone made (torchrun sets 1 per rank), so this module
then leaves the threads alone.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import time
from pathlib import Path

import torch

REGISTRY = Path(tempfile.gettempdir()) / "preftune-stages"  # one empty file per running stage, named by its pid
RECHECK_S = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class CoreShare:
    def __init__(self):
        self.enabled = "OMP_NUM_THREADS" not in os.environ
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.checked = 0.0
        if self.enabled:
            REGISTRY.mkdir(parents=True, exist_ok=True)
            self.mine = REGISTRY / str(os.getpid())
            self.mine.touch()
            atexit.register(self.close)
            self.adjust(force=True)

    def running(self) -> int:
        """Stages running on this machine now, this one included; files of dead processes are removed."""
        count = 0
        for entry in REGISTRY.iterdir():
            if entry.name.isdigit() and _alive(int(entry.name)):
                count += 1
            else:
                entry.unlink(missing_ok=True)  # a stage that was killed: its file stayed behind
        return max(count, 1)

    def adjust(self, force: bool = False) -> None:
        """Resize torch's thread pool to this stage's share of the cores (at most once a second)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self.checked < RECHECK_S):
            return
        self.checked = now
        threads = max(1, self.cores // self.running())
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self.enabled:
            self.mine.unlink(missing_ok=True)


_share: CoreShare | None = None


def register() -> str | None:
    """Count this process as a running stage (params.start_stage does; library users and tests do not). Returns
    what the share is when another stage is running too ("1 of 2 cores, 2 stages running"), else None."""
    global _share
    if _share is None:
        _share = CoreShare()
    if not _share.enabled:
        return None
    running = _share.running()
    return f"{torch.get_num_threads()} of {_share.cores} cores, {running} stages running" if running > 1 else None


def adjust() -> None:
    """A registered stage's periodic re-check (a no-op elsewhere)."""
    if _share is not None:
        _share.adjust()
