"""Training a policy on a preference objective and saving it: the dpo stage's model (from models/sft) and each
on-policy round's (from the policy it starts from) are made here, the same way."""

from __future__ import annotations

import logging

import torch

from ..model import adapters, loading, runtime
from ..pipeline import files
from ..pipeline.cards import write_model_card
from .batches import global_batch
from .loop import fit
from .memory import enable_checkpointing
from .saving import save_trained

log = logging.getLogger("dpo")


def train_and_save(run, cfg: dict, seed: int, objective, tokenizer, encode, start: str, out: str,
                   lives: tuple[str, ...], card: tuple[dict, str, str]) -> None:
    """Train a policy initialised from the model in `start` (models/sft; an on-policy round's previous policy)
    on `objective`, and save `out`: the merged model, its tokenizer and manifest.json, and the adapter in
    `out`/adapter. `lives`: the DVCLive folders of the epoch log and (optionally) the per-step log; `card`: (params,
    the params section the settings come from, the training data file) for the model card (cards.py)."""
    policy = loading.load_causal_lm(start)
    loading.disable_dropout(policy)  # dropout would make the policy differ from the reference at step 0
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(policy)
    lora = cfg["lora"]
    if lora:
        policy = adapters.attach_lora(policy, lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"])
    trainable, total = loading.count_parameters(policy)
    log.info("policy: %d of %d parameters trainable (%s)", trainable, total, "LoRA" if lora else "full fine-tuning")
    # The frozen base in the compute dtype: autocast would cast it to bf16 on every forward. Not under FSDP or ZeRO,
    # which flatten parameters of one dtype.
    process = run.process
    base_in_bf16 = bool(lora) and cfg["precision"] == "bf16" and not process.sharded
    if base_in_bf16:
        log.info("frozen base held in bf16: %d parameters", adapters.frozen_linears_to(policy, torch.bfloat16))

    epoch_live = run.logs.open(lives[0])
    step_live = run.logs.open(lives[1]) if len(lives) > 1 else None
    runtime.seed_everything(seed + process.rank)  # LoRA dropout differs per rank
    history, trained = fit(run, policy, objective, seed, epoch_live, step_live)
    save_trained(process, trained, f"{out}/adapter" if lora else out)
    if process.is_main:
        # The merged model is the fp32 start weights plus the adapter: reloaded where the base in memory is sharded
        # or was rounded to bf16.
        base = loading.load_causal_lm(start) if process.sharded or base_in_bf16 else None
        write_merged_model_and_manifest(process, policy, base, tokenizer, cfg, seed, history[-1], encode.stats(), out)
        params, section, data_file = card
        write_model_card(out, "dpo", params, cfg, section, start, data_file)


def write_merged_model_and_manifest(process, policy, base, tokenizer, cfg: dict, seed: int, final: dict,
                                    encoding: dict, out: str) -> None:
    """`out` (models/dpo): the plain merged model (`base`, when given, with the saved adapter loaded onto it; else
    the in-memory policy), its tokenizer and manifest.json."""
    lora = cfg["lora"]
    if lora:
        merged = policy if base is None else loading.load_adapter(base, f"{out}/adapter")
        merged.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)
    files.write_json(f"{out}/manifest.json", {
        "seed": seed, "beta": cfg["beta"], "lr": cfg["lr"], "epochs": cfg["epochs"], "loss": cfg["loss"],
        "batch_size": cfg["batch_size"], "world_size": process.world,
        "gradient_accumulation_steps": process.accumulation,
        "effective_batch_size": global_batch(process, cfg["batch_size"]),
        "precision": cfg["precision"], "gradient_checkpointing": cfg["gradient_checkpointing"],
        "reference": cfg["reference"], "lora": lora,
        "final_train_loss": round(final["train_loss"], 6),
        **{f"final_train_{k}": round(final[f"train_{k}"], 6) for k in ("pair_accuracy", "label_accuracy")
           if f"train_{k}" in final},
        "encoding": encoding,
    })
