"""dpo: preference-tune the SFT model (a LoRA adapter by default) against the precomputed reference
log-probs, on pairs, or with dpo.loss: kto on unpaired feedback. Saves models/dpo: a plain model (the adapter
merged into the base; loads with AutoModelForCausalLM, no peft) with its tokenizer and manifest.json, and the
adapter itself in models/dpo/adapter. Logs metrics/dpo and metrics/dpo_steps (DVCLive)."""

import logging

import torch
from safetensors.torch import load_file

from preftune import data, modeling
from preftune.batching import Encoder
from preftune.errors import exit_on_user_error
from preftune.paths import DPO, DPO_ADAPTER, REFERENCE, SFT, live, prepared
from preftune.preference import preference_objective
from preftune.training import enable_checkpointing, fit, start_training

log = logging.getLogger("dpo")


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("dpo", __doc__)  # seed: dpo.seed when set
    tokenizer = modeling.load_tokenizer(SFT)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    # Built before any model loads: data that does not suit the loss, a reference file made from other data, or a
    # batch larger than the data is one line.
    objective = preference_objective(run, encode, data.read_jsonl(prepared("train")),
                                     data.read_jsonl(prepared("heldout")), cfg, load_file(REFERENCE), REFERENCE)
    policy = modeling.load_causal_lm(SFT)
    modeling.disable_dropout(policy)  # dropout would make the policy differ from the reference at step 0
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(policy)
    lora = cfg["lora"]
    if lora:
        policy = modeling.attach_lora(policy, lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"])
    trainable, total = modeling.count_parameters(policy)
    log.info("policy: %d of %d parameters trainable (%s)", trainable, total, "LoRA" if lora else "full fine-tuning")
    # The frozen base in the compute dtype: autocast would cast it to bf16 on every forward. Not under FSDP or ZeRO,
    # which flatten parameters of one dtype.
    base_in_bf16 = bool(lora) and cfg["precision"] == "bf16" and not run.sharded
    if base_in_bf16:
        log.info("frozen base held in bf16: %d parameters", modeling.frozen_linears_to(policy, torch.bfloat16))

    epoch_live, step_live = run.live(live("dpo")), run.live(live("dpo_steps"))
    modeling.seed_everything(seed + run.rank)  # LoRA dropout differs per rank
    history, trained = fit(run, policy, objective, seed, epoch_live, step_live)
    run.save_pretrained(trained, DPO_ADAPTER if lora else DPO)
    if run.is_main:
        # The merged model is the fp32 SFT weights plus the adapter: reloaded where the base in memory is sharded or
        # was rounded to bf16.
        base = modeling.load_causal_lm(SFT) if run.sharded or base_in_bf16 else None
        write_merged_model_and_manifest(run, policy, base, tokenizer, cfg, seed, history[-1], encode.stats())
    run.end()


def write_merged_model_and_manifest(run, policy, base, tokenizer, cfg: dict, seed: int, final: dict,
                                    encoding: dict) -> None:
    """models/dpo: the plain merged model (`base`, when given, with the saved adapter loaded onto it; else the
    in-memory policy), its tokenizer and manifest.json."""
    lora = cfg["lora"]
    if lora:
        merged = policy if base is None else modeling.load_adapter(base, DPO_ADAPTER)
        merged.merge_and_unload().save_pretrained(DPO)
    tokenizer.save_pretrained(DPO)
    data.write_json(f"{DPO}/manifest.json", {
        "seed": seed, "beta": cfg["beta"], "lr": cfg["lr"], "epochs": cfg["epochs"], "loss": cfg["loss"],
        "batch_size": cfg["batch_size"], "world_size": run.world,
        "gradient_accumulation_steps": run.accumulation, "effective_batch_size": run.global_batch(cfg["batch_size"]),
        "precision": cfg["precision"], "gradient_checkpointing": cfg["gradient_checkpointing"],
        "reference": cfg["reference"], "lora": lora,
        "final_train_loss": round(final["train_loss"], 6),
        **{f"final_train_{k}": round(final[f"train_{k}"], 6) for k in ("pair_accuracy", "label_accuracy")
           if f"train_{k}" in final},
        "encoding": encoding,
    })


if __name__ == "__main__":
    with exit_on_user_error("dpo"):
        main()
