#!/usr/bin/env python
"""What portable numerics cost (stages/preftune/pipeline/numerics.py): portable against native, in one run, on this machine.

    .venv/bin/python benchmarks/numerics.py [--repeats K] [--pairs N] [--no-pipeline]

Three measurements, each alternating native and portable (native, portable, native, ...; medians over K):
  matmul     fp32 GFLOP/s of a 1024 x 1024 matmul (MKL: its native dispatch against its COMPATIBLE path)
  smollm2    the dpo stage's training step (benchmarks/dpo_smollm2.py's "A fp32" configuration:
             SmolLM2-135M-Instruct, LoRA r8, 8 pairs a step, the long ShareGPT fixture fitted to 256 tokens);
             one step of 8 pairs after an untimed warm-up step, in each of K fresh processes
  pipeline   the default `dvc repro --force` in a scratch clone of this working tree, with params.yaml's
             numerics set to each mode (once each: about 3 and 4.5 minutes on a 2-core AMD EPYC)
Each measurement runs in a fresh process whose environment is the mode's before torch loads: portable's is
numerics.portable_environment(threads), native's is this shell's. Results: stdout and
benchmarks/results/numerics.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
sys.path.insert(0, str(REPO / "benchmarks"))

from preftune.pipeline import numerics  # noqa: E402  (torch-free: this process stays unpinned; its children are pinned)

MODES = ("native", "portable")
MATMUL = """
import time, torch
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
for _ in range(3): a @ b
times = []
for _ in range(20):
    t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
print(2 * 1024 ** 3 / sorted(times)[10] / 1e9)
"""


def environment(mode: str, threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {**env, **numerics.portable_environment(threads)} if mode == "portable" else env


def last_line(cmd: list[str], env: dict, cwd: Path = REPO) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def smollm2_model(folder: Path) -> None:
    """SmolLM2 dequantized once to a plain folder, as dpo_smollm2.py's parent does."""
    from dpo_smollm2 import SMOLLM2

    from preftune.model import loading

    loading.load_causal_lm(SMOLLM2).save_pretrained(folder)
    loading.load_tokenizer(SMOLLM2).save_pretrained(folder)


def pipeline_seconds(mode: str, threads: int, workdir: Path) -> float:
    repo = workdir / f"pipeline-{mode}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):  # the working tree as it is, like the tests' clone_working_tree
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("numerics: portable", f"numerics: {mode}", 1))
    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "--force"], cwd=repo, env=environment("native", threads),  # the stage pins
                   check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="alternations of native and portable (default 3)")
    parser.add_argument("--threads", type=int, default=numerics.DEFAULT_THREADS, help="portable's threads")
    parser.add_argument("--pairs", type=int, default=8, help="fitted pairs in the SmolLM2 epoch (default 8: one timed step)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the two `dvc repro --force` runs")
    args = parser.parse_args()
    print(f"{numerics.cpu_model()}, {os.cpu_count()} CPUs; portable with {args.threads} threads", flush=True)
    results: dict = {"cpu": numerics.cpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(),
                     "threads": args.threads, "matmul_gflops": {m: [] for m in MODES},
                     "smollm2_step_s": {m: [] for m in MODES}, "pipeline_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "smollm2"
        smollm2_model(model)
        for repeat in range(args.repeats):
            for mode in MODES:
                env = environment(mode, args.threads)
                results["matmul_gflops"][mode].append(float(last_line([sys.executable, "-c", MATMUL], env)))
                child = [sys.executable, str(REPO / "benchmarks" / "dpo_smollm2.py"), "--pairs", str(args.pairs),
                         "--child", "A fp32", str(model), tmp, "256"]
                step = statistics.median(json.loads(last_line(child, env))["step_s"])
                results["smollm2_step_s"][mode].append(step)
                print(f"  repeat {repeat + 1} {mode:8}  matmul {results['matmul_gflops'][mode][-1]:5.0f} GFLOP/s  "
                      f"SmolLM2 DPO step {step:5.2f} s", flush=True)
        if not args.no_pipeline:
            for mode in MODES:
                results["pipeline_s"][mode] = pipeline_seconds(mode, args.threads, Path(tmp))
                print(f"  dvc repro --force, numerics {mode}: {results['pipeline_s'][mode]:.0f} s", flush=True)
    med = {k: {m: statistics.median(v[m]) for m in MODES} for k, v in results.items()
           if k in ("matmul_gflops", "smollm2_step_s")}
    ratios = {"matmul native / portable": med["matmul_gflops"]["native"] / med["matmul_gflops"]["portable"],
              "SmolLM2 DPO step portable / native": med["smollm2_step_s"]["portable"] / med["smollm2_step_s"]["native"]}
    if results["pipeline_s"]:
        ratios["dvc repro portable / native"] = results["pipeline_s"]["portable"] / results["pipeline_s"]["native"]
    results.update({"medians": med, "ratios": ratios})
    print("medians:", json.dumps(med), "\nratios:", json.dumps({k: round(v, 2) for k, v in ratios.items()}))
    out = REPO / "benchmarks" / "results" / "numerics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
