"""sft: the reference policy. `model.base: scratch` trains a small GPT-2 from nothing (on the tokenizer
that prepare trained); any other value (a local directory, a GGUF file, a hub id) is loaded with
AutoModelForCausalLM, and `sft.epochs: 0` keeps it as it is. Saves models/sft, always a plain
safetensors checkpoint (save_pretrained), and logs metrics/sft (DVCLive)."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging

from preftune.data.encoding import Encoder
from preftune.model import loading, runtime, scratch
from preftune.data.gold import gold_accuracy
from preftune.model.generation import generate_answers
from preftune.pipeline import files
from preftune.pipeline.cards import write_model_card
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.paths import SFT, TOKENIZER, check_set, live, prepared
from preftune.train.loop import fit, start_training
from preftune.train.memory import enable_checkpointing
from preftune.train.saving import save_trained
from preftune.train.sft_objective import SFTObjective

log = logging.getLogger("sft")


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("sft", __doc__)
    process = run.process
    tokenizer = loading.load_tokenizer(TOKENIZER)  # prepare's: the base model's, or trained on the data
    if model_cfg["base"] == "scratch":
        model = scratch.new_gpt2(tokenizer, model_cfg["n_layer"], model_cfg["n_embd"], model_cfg["n_head"],
                                 model_cfg["max_length"])
    else:
        model = loading.load_causal_lm(model_cfg["base"], model_cfg["trust_remote_code"])
    loading.ensure_pad_token(tokenizer, model)
    trainable, total = loading.count_parameters(model)
    log.info("%s: %.2fM parameters, vocabulary %d, device %s, %d process(es)", model_cfg["base"], total / 1e6,
             len(tokenizer), process.device, process.world)
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(model)

    metrics_live, metrics = run.logs.open(live("sft")), {}
    if cfg["epochs"] > 0:
        encode = Encoder(tokenizer, model_cfg["max_length"])
        objective = SFTObjective(process, encode, files.read_jsonl(prepared("sft")),
                                 files.read_jsonl(prepared("heldout")), cfg)
        runtime.seed_everything(seed + process.rank)  # dropout differs per rank
        history, trained = fit(run, model, objective, seed, metrics_live)
        metrics = {**history[-1], **encode.stats()}
        save_trained(process, trained, SFT)
    if process.is_main:
        if cfg["epochs"] == 0:
            model.to(process.device).save_pretrained(SFT)
        tokenizer.save_pretrained(SFT)
        write_model_card(SFT, "sft", params, cfg, "sft", model_cfg["base"], prepared("sft"))
        # The saved model, reloaded: what every later stage sees, whatever engine trained it.
        model = loading.load_causal_lm(SFT).to(process.device) if process.sharded else model
        gold = files.read_optional_jsonl(check_set("gold"))  # the built-in task's gold prompts; none for user data
        answers = generate_answers(model, tokenizer, [g["prompt"] for g in gold], cfg["eval_max_new_tokens"],
                                   desc="gold answers", max_length=model_cfg["max_length"])
        metrics["gold_accuracy"] = gold_accuracy(gold, answers)
        metrics["parameters"] = total
        log.info("gold accuracy of greedy answers: %s", metrics["gold_accuracy"])
    run.end({k: metrics.get(k) for k in ("gold_accuracy", "parameters", "truncated", "boundary_merges")})


if __name__ == "__main__":
    with exit_on_user_error("sft"):
        main()
