#!/usr/bin/env python
"""Contention: the `dpo` stage alone and two copies at once, at `threads: 2` (the default) and at `threads: 1`,
and a 2-experiment sweep with `dvc queue start -j 1` against `-j 2` at the default, all in one run.

    .venv/bin/python benchmarks/contention.py [--repeats 3]

A stage holds one core per thread it runs (stages/preftune/pipeline/cores.py) and waits while other stages hold them; the
thread count itself is fixed by params.yaml's `threads` (numerics.py: it changes the bits). So on a 2-core machine,
at threads 2 two stages run one after the other, and at threads 1 they run side by side, each on one core. The
runs use two copies of this workspace (git history, DVC cache, outputs) in a temporary folder, brought up to date
with one `dvc repro` first. Results: stdout and benchmarks/results/contention.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CORES = len(os.sched_getaffinity(0))
THREADS = (2, 1)
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True, text=True)


def set_threads(dirs: list[Path], threads: int) -> None:
    for d in dirs:
        params = d / "params.yaml"
        text = params.read_text()
        params.write_text(re.sub(r"(?m)^threads: \d+", f"threads: {threads}", text, count=1))


def stages_at_once(dirs: list[Path]) -> list[float]:
    """Start `python stages/dpo.py` in each folder at the same moment; wall seconds of each."""
    start = time.monotonic()
    procs = [subprocess.Popen([str(BIN / "python"), "stages/dpo.py"], cwd=d, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]
    ends = []
    for proc in procs:
        assert proc.wait() == 0
        ends.append(time.monotonic() - start)
    return ends


def sweep(repo: Path, betas: list[float], jobs: int, threads: int) -> float:
    """Queue one experiment per beta, run the queue with `jobs` workers; wall seconds until all are done."""
    for beta in betas:
        run([str(BIN / "dvc"), "exp", "run", "--queue", "-S", f"dpo.beta={beta}", "-S", f"threads={threads}"], repo)
    start = time.monotonic()
    run([str(BIN / "dvc"), "queue", "start", "-j", str(jobs)], repo)
    while True:
        status = subprocess.run([str(BIN / "dvc"), "queue", "status"], cwd=repo, env=ENV,
                                capture_output=True, text=True).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(1)
    seconds = time.monotonic() - start
    assert "Failed" not in status, status
    run([str(BIN / "dvc"), "queue", "stop"], repo)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        shutil.copytree(REPO, a, symlinks=True, ignore=shutil.ignore_patterns(".venv", "results", "tmp"))
        run([str(BIN / "dvc"), "repro"], a)
        run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qam", "bench",
             "--allow-empty"], a)
        shutil.copytree(a, b, symlinks=True)
        results: dict = {"cores": CORES, "repeats": args.repeats}
        for threads in THREADS:
            set_threads([a, b], threads)
            alone = [stages_at_once([a])[0] for _ in range(args.repeats)]
            pair = [max(stages_at_once([a, b])) for _ in range(args.repeats)]
            results[f"threads_{threads}"] = {"alone_s": alone, "two_at_once_s": pair}
            print(f"threads {threads}: dpo alone {statistics.median(alone):5.1f} s; two at once, both done after "
                  f"{statistics.median(pair):5.1f} s (serial would be {2 * statistics.median(alone):5.1f} s)",
                  flush=True)
        # The sweeps run at the workspace's threads (2). A sweep at another thread count would rerun sft and reward
        # too (threads is in their params), and the run-cache would then hand -j 1's second experiment the first
        # one's sft: -j 1 and -j 2 would not do the same work.
        set_threads([a, b], THREADS[0])
        for jobs, threads, betas in ((1, 2, [0.5, 2.0]), (2, 2, [0.6, 2.1])):
            seconds = sweep(a, betas, jobs, threads)
            results[f"queue_j{jobs}_threads_{threads}_s"] = seconds
            print(f"dvc queue start -j {jobs}, threads {threads}: 2 experiments in {seconds:5.1f} s", flush=True)
    med = statistics.median
    t2, t1 = results["threads_2"], results["threads_1"]
    results["ratios"] = {
        "alone_threads1_over_threads2": med(t1["alone_s"]) / med(t2["alone_s"]),
        "two_at_once_over_serial_threads2": med(t2["two_at_once_s"]) / (2 * med(t2["alone_s"])),
        "two_at_once_over_serial_threads1": med(t1["two_at_once_s"]) / (2 * med(t1["alone_s"])),
        "queue_j2_over_j1_threads2": results["queue_j2_threads_2_s"] / results["queue_j1_threads_2_s"],
    }
    print("ratios (below 1: faster):", json.dumps({k: round(v, 2) for k, v in results["ratios"].items()}))
    out = REPO / "benchmarks" / "results" / "contention.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
