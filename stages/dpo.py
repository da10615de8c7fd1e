"""dpo: preference-tune the SFT model (a LoRA adapter by default) against the precomputed reference
log-probs, on pairs, or with dpo.loss: kto on unpaired feedback. Saves models/dpo: a plain model (the adapter merged into the base; loads with
AutoModelForCausalLM, no peft) with its tokenizer and manifest.json, and the adapter itself in
models/dpo/adapter. Logs metrics/dpo (DVCLive)."""

import logging

from safetensors.torch import load_file

from preftune import data, formats, modeling
from preftune.paths import DPO, DPO_ADAPTER, REFERENCE, SFT, prepared
from preftune.batching import Encoder
from preftune.errors import ConfigError, DataError, exit_on_user_error
from preftune.losses import UNPAIRED_LOSSES
from preftune.params import section, start_stage
from preftune.pairs import encode_pairs, kinds_of, reference_key
from preftune.preference import PairBatcher, UnpairedBatcher, check_config, train_preferences
from preftune.training import Run, enable_checkpointing

log = logging.getLogger("dpo")


def main() -> None:
    params = start_stage(__doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "dpo")
    check_config(cfg)  # before anything is written: a bad value leaves no partial outputs
    # dpo.seed varies only DPO's own randomness (LoRA init, batch order) over a fixed SFT model and data.
    seed = seed if cfg["seed"] is None else cfg["seed"]
    run = Run(model_cfg["device"], cfg, "dpo", params)  # one process, or this rank of a torchrun / accelerate launch
    modeling.seed_everything(seed)  # the same on every rank: the same LoRA initialisation

    # The data and its reference log-probs must suit the loss: checked before any model is loaded.
    rows = {split: data.read_jsonl(prepared(split)) for split in ("train", "heldout")}
    unpaired = formats.is_unpaired(rows["train"])
    if unpaired and cfg["loss"] not in UNPAIRED_LOSSES:
        raise ConfigError(f"params.yaml: dpo.loss: {cfg['loss']} needs preference pairs, but data.source holds "
                          f"unpaired feedback (prompt, completion, label); use dpo.loss: "
                          f"{' or '.join(sorted(UNPAIRED_LOSSES))}, or a file of pairs")
    if len(rows["train"]) < cfg["batch_size"]:
        raise ConfigError(f"params.yaml: dpo.batch_size: {cfg['batch_size']} is more than the {len(rows['train'])} "
                          f"training rows; lower it, or hold out fewer rows (data.heldout)")
    reference = load_file(REFERENCE)
    for split in ("train", "heldout"):
        keys = [reference_key(split, kind) for kind in kinds_of(rows[split])]
        found = {len(reference[k]) if k in reference else None for k in keys}
        if found != {len(rows[split])}:
            raise DataError(f"{REFERENCE}: made from other data ({sorted(found, key=str)} {split} rows, "
                            f"{prepared(split)} has {len(rows[split])}); run `dvc checkout` or `dvc repro` to "
                            "bring it in line with the data")

    tokenizer = modeling.load_tokenizer(SFT)
    policy = modeling.load_causal_lm(SFT)
    modeling.disable_dropout(policy)  # dropout would make the policy differ from the reference at step 0
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(policy)
    lora = cfg["lora"]
    if lora:
        policy = modeling.attach_lora(policy, lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"])
    trainable, total = modeling.count_parameters(policy)
    log.info("policy: %d of %d parameters trainable (%s)", trainable, total, "LoRA" if lora else "full fine-tuning")

    encode = Encoder(tokenizer, model_cfg["max_length"])
    batchers, sizes = {}, {}
    for split in ("train", "heldout"):
        ref = {kind: reference[reference_key(split, kind)] for kind in kinds_of(rows[split])}
        encoded = encode_pairs(encode, rows[split])
        batchers[split] = (UnpairedBatcher(encoded, [r["label"] for r in rows[split]], ref, tokenizer.pad_token_id,
                                           run.device) if unpaired
                           else PairBatcher(encoded, ref, tokenizer.pad_token_id, run.device))
        sizes[split] = len(rows[split])

    epoch_live, step_live = run.live("metrics/dpo"), run.live("metrics/dpo_steps")
    modeling.seed_everything(seed + run.rank)  # LoRA dropout differs per rank
    history, trained = train_preferences(run, policy, batchers["train"], batchers["heldout"], sizes["train"],
                                         sizes["heldout"], cfg, seed, epoch_live, step_live)
    epoch_live.end()
    step_live.end()

    run.save_pretrained(trained, DPO_ADAPTER if lora else DPO)
    if run.is_main:
        write_merged_model_and_manifest(run, policy, tokenizer, cfg, seed, history[-1], encode.stats())
    run.finish()


def write_merged_model_and_manifest(run, policy, tokenizer, cfg: dict, seed: int, final: dict, encoding: dict) -> None:
    lora = cfg["lora"]
    if lora:  # models/dpo is the plain merged model; under FSDP/ZeRO the in-memory policy is sharded: reload
        base = policy if not run.sharded else modeling.load_adapter(modeling.load_causal_lm(SFT), DPO_ADAPTER)
        base.merge_and_unload().save_pretrained(DPO)
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
