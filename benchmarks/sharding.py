"""Memory and step time of the reward stage's full fine-tune under each `sharding` (sharding.py), in one run:
1 process, then 2 CPU ranks (torchrun, gloo) of DDP, FSDP2 and DeepSpeed ZeRO-3 (and ZeRO-2).

    .venv/bin/python benchmarks/sharding.py                    # SmolLM2-135M-Instruct, 8 pairs x 256 tokens a step
    .venv/bin/python benchmarks/sharding.py --model <dir|gguf|package:...> --pairs 8 --length 256 --steps 3

Each configuration is a fresh launch. Every rank builds the stages' own Process with that sharding, loads the model as
the reward stage does (reward_model.load_reward_model: the backbone and a `score` head, every weight trained with
AdamW), and runs the stages' own step (loop.train_step on reward_objective.BradleyTerryObjective) on the same
global batch of random token pairs: one warm-up step, then `--steps` timed ones (median reported). Per rank: peak
RSS (getrusage), the median step time, and the bytes of that rank's share of a checkpoint (the weights and the
optimizer state as the engine saves them: accelerate's save_state, FSDP2's torch.distributed.checkpoint shards),
which is the sharded training state a rank holds, against the model's own fp32 size. Ranks get one thread each
(torchrun's OMP_NUM_THREADS=1); the single process gets every core. Results: benchmarks/results/sharding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))

import torch  # noqa: E402
from logprob_memory import SMOLLM2, sequences  # noqa: E402

from preftune.model import loading, runtime  # noqa: E402
from preftune.model.reward_model import load_reward_model  # noqa: E402
from preftune.train import loop, sharding  # noqa: E402
from preftune.train.process import Process  # noqa: E402
from preftune.train.reward_objective import BradleyTerryObjective  # noqa: E402

CONFIGS = [("1 process", 1, "none"), ("DDP", 2, "none"), ("FSDP2", 2, "fsdp2"), ("ZeRO-3", 2, "zero3"),
           ("ZeRO-2", 2, "zero2")]


def rank_files(folder: Path, world: int) -> list[int]:
    """Bytes of each rank's files in a checkpoint folder: the files named for a rank (FSDP2's __<r>_0.distcp,
    DeepSpeed's *rank_<r>_*, accelerate's random_states_<r>) are that rank's, the rest (written by rank 0) rank 0's."""
    sizes = [0] * world
    for path in folder.rglob("*"):
        if path.is_file():
            m = re.search(r"__(\d+)_0\.distcp$|rank_(\d+)_|random_states_(\d+)", path.name)
            sizes[int(next(g for g in m.groups() if g)) if m else 0] += path.stat().st_size
    return sizes


def child(model_dir: str, shard: str, pairs: int, length: int, steps: int, out_dir: str) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = {"precision": "fp32", "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
           "batch_size": pairs // world, "epochs": 1, "lr": 1e-5, "weight_decay": 0.0, "schedule": "constant",
           "warmup_steps": 0, "max_grad_norm": 1.0, "center_coef": 0.0}
    run = Process("cpu", cfg, shard=shard)
    runtime.seed_everything(0)
    tokenizer = loading.load_tokenizer(model_dir)
    model = load_reward_model(model_dir)
    total_params = sum(p.numel() for p in model.parameters())
    vocab = len(tokenizer)
    data = list(zip(sequences(pairs, length, vocab, 1), sequences(pairs, length, vocab, 2)))
    objective = BradleyTerryObjective.on_sequences(run, data, cfg, tokenizer.pad_token_id)
    model, optimizer, scheduler = loop.prepare(run, objective.wrap(model), cfg, pairs)
    model.train()
    times = []
    for k in range(steps + 1):  # the first is the warm-up: optimizer state and allocator pools exist after it
        start = time.perf_counter()
        loop.train_step(run, model, optimizer, scheduler, objective, list(range(pairs)), cfg["max_grad_norm"])
        times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    run.accelerator.save_state(out_dir)
    if run.fsdp2:
        sharding.save_sharded(str(Path(out_dir) / "fsdp2"), model, optimizer)
    run.accelerator.wait_for_everyone()
    gathered = [None] * run.world
    mine = {"peak_rss_gb": round(peak_gb, 2), "step_s": round(statistics.median(times[1:]), 2)}
    if run.world > 1:
        torch.distributed.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    return {"ranks": gathered, "checkpoint_gb_per_rank": [round(b / 1e9, 3) for b in rank_files(Path(out_dir), run.world)],
            "model_fp32_gb": round(total_params * 4 / 1e9, 3), "parameters": total_params,
            "engine": run.accelerator.distributed_type.value, "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per optimizer step, over all ranks")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS], choices=[c[0] for c in CONFIGS])
    parser.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "SHARDING", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child(args.child[0], args.child[1], args.pairs, args.length, args.steps, args.child[2])
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(out), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"  # converted once: a GGUF file dequantizes slowly
        loading.load_causal_lm(args.model).save_pretrained(model_dir)
        loading.load_tokenizer(args.model).save_pretrained(model_dir)
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(Path(__file__).parent)}
        for name, ranks, shard in [c for c in CONFIGS if c[0] in args.configs]:
            launch = [sys.executable] if ranks == 1 else [str(Path(sys.executable).parent / "torchrun"),
                                                          "--standalone", "--nproc_per_node", str(ranks)]
            out = subprocess.run([*launch, __file__, "--child", str(model_dir), shard, f"{tmp}/ckpt-{shard}-{ranks}",
                                  "--pairs", str(args.pairs), "--length", str(args.length), "--steps", str(args.steps)],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"sharding.py: {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            row = {"config": name, "processes": ranks, "sharding": shard,
                   **json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])}
            rows.append(row)
            rss = " ".join(f"{r['peak_rss_gb']:5.2f}" for r in row["ranks"])
            step = " ".join(f"{r['step_s']:6.2f}" for r in row["ranks"])
            state = " ".join(f"{b:5.2f}" for b in row["checkpoint_gb_per_rank"])
            print(f"{name:9} {row['engine']:9} peak RSS per rank {rss} GB   step {step} s   checkpoint per rank "
                  f"{state} GB (model {row['model_fp32_gb']} GB)", flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown")
    result = {"model": args.model, "pairs": args.pairs, "length": args.length, "steps": args.steps, "cpu": cpu,
              "cores": os.cpu_count(), "rows": rows}
    path = Path(__file__).parent / "results" / "sharding.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
