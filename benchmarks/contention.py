#!/usr/bin/env python
"""Contention: the `dpo` stage alone, two copies at once, and a 2-experiment sweep with `dvc queue start -j 1`
against `-j 2`, each with the core-sharing policy of stages/preftune/cores.py on and off, all in one run.

    .venv/bin/python benchmarks/contention.py [--repeats 3]

"Off" is torch's default: every stage takes every core (OMP_NUM_THREADS = the core count, which also switches
the policy off). "On" is the default of the stages: each takes cores // stages running, re-checked once a second.
The runs use two copies of this workspace (git history, DVC cache, outputs) in a temporary folder, brought up to
date with one `dvc repro` first. Results: stdout and benchmarks/results/contention.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CORES = len(os.sched_getaffinity(0))
POLICIES = {"on": {}, "off": {"OMP_NUM_THREADS": str(CORES)}}


def env(policy: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return {**base, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1", **POLICIES[policy]}


def run(cmd: list[str], cwd: Path, policy: str = "on") -> None:
    subprocess.run(cmd, cwd=cwd, env=env(policy), check=True, capture_output=True, text=True)


def stages_at_once(dirs: list[Path], policy: str) -> list[float]:
    """Start `python stages/dpo.py` in each folder at the same moment; wall seconds of each."""
    start = time.monotonic()
    procs = [subprocess.Popen([str(BIN / "python"), "stages/dpo.py"], cwd=d, env=env(policy),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]
    ends = []
    for proc in procs:
        assert proc.wait() == 0
        ends.append(time.monotonic() - start)
    return ends


def sweep(repo: Path, betas: list[float], jobs: int, policy: str) -> float:
    """Queue one experiment per beta, run the queue with `jobs` workers; wall seconds until all are done."""
    for beta in betas:
        run([str(BIN / "dvc"), "exp", "run", "--queue", "-S", f"dpo.beta={beta}"], repo, policy)
    start = time.monotonic()
    run([str(BIN / "dvc"), "queue", "start", "-j", str(jobs)], repo, policy)
    while True:
        status = subprocess.run([str(BIN / "dvc"), "queue", "status"], cwd=repo, env=env(policy),
                                capture_output=True, text=True).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(1)
    seconds = time.monotonic() - start
    assert "Failed" not in status, status
    run([str(BIN / "dvc"), "queue", "stop"], repo, policy)
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
        for policy in ("off", "on"):
            alone = [stages_at_once([a], policy)[0] for _ in range(args.repeats)]
            pair = [max(stages_at_once([a, b], policy)) for _ in range(args.repeats)]
            results[policy] = {"alone_s": alone, "two_at_once_s": pair}
            print(f"policy {policy:3}: dpo alone {statistics.median(alone):5.1f} s; two at once, both done after "
                  f"{statistics.median(pair):5.1f} s (serial would be {2 * statistics.median(alone):5.1f} s)",
                  flush=True)
        for jobs, policy, betas in ((1, "on", [0.5, 2.0]), (2, "off", [0.6, 2.1]), (2, "on", [0.7, 2.2])):
            seconds = sweep(a, betas, jobs, policy)
            results[f"queue_j{jobs}_{policy}_s"] = seconds
            print(f"dvc queue start -j {jobs}, policy {policy:3}: 2 experiments in {seconds:5.1f} s", flush=True)
    on, off = results["on"], results["off"]
    med = statistics.median
    results["ratios"] = {
        "alone_on_over_off": med(on["alone_s"]) / med(off["alone_s"]),
        "two_at_once_over_serial_on": med(on["two_at_once_s"]) / (2 * med(on["alone_s"])),
        "two_at_once_over_serial_off": med(off["two_at_once_s"]) / (2 * med(off["alone_s"])),
        "queue_j2_over_j1_on": results["queue_j2_on_s"] / results["queue_j1_on_s"],
        "queue_j2_over_j1_off": results["queue_j2_off_s"] / results["queue_j1_on_s"],
    }
    print("ratios (below 1: faster):", json.dumps({k: round(v, 2) for k, v in results["ratios"].items()}))
    out = REPO / "benchmarks" / "results" / "contention.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
