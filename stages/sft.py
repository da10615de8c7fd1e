"""sft: the reference policy. `model.base: scratch` trains a small GPT-2 from nothing (on the tokenizer
that prepare trained); any other value (a local directory, a GGUF file, a hub id) is loaded with
AutoModelForCausalLM, and `sft.epochs: 0` keeps it as it is. Saves models/sft, always a plain
safetensors checkpoint (save_pretrained), and logs metrics/sft (DVCLive)."""

from preftune import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging

from preftune import data, modeling
from preftune.batching import Encoder
from preftune.cards import write_model_card
from preftune.errors import exit_on_user_error
from preftune.generation import generate_answers, gold_accuracy
from preftune.paths import SFT, TOKENIZER, check_set, live, prepared
from preftune.supervised import SFTObjective
from preftune.training import enable_checkpointing, fit, start_training

log = logging.getLogger("sft")


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("sft", __doc__)
    tokenizer = modeling.load_tokenizer(TOKENIZER)  # prepare's: the base model's, or trained on the data
    if model_cfg["base"] == "scratch":
        model = modeling.new_gpt2(tokenizer, model_cfg["n_layer"], model_cfg["n_embd"], model_cfg["n_head"],
                                  model_cfg["max_length"])
    else:
        model = modeling.load_causal_lm(model_cfg["base"], model_cfg["trust_remote_code"])
    modeling.ensure_pad_token(tokenizer, model)
    trainable, total = modeling.count_parameters(model)
    log.info("%s: %.2fM parameters, vocabulary %d, device %s, %d process(es)", model_cfg["base"], total / 1e6,
             len(tokenizer), run.device, run.world)
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(model)

    metrics_live, metrics = run.live(live("sft")), {}
    if cfg["epochs"] > 0:
        encode = Encoder(tokenizer, model_cfg["max_length"])
        objective = SFTObjective(run, encode, data.read_jsonl(prepared("sft")), data.read_jsonl(prepared("heldout")),
                                 cfg)
        modeling.seed_everything(seed + run.rank)  # dropout differs per rank
        history, trained = fit(run, model, objective, seed, metrics_live)
        metrics = {**history[-1], **encode.stats()}
        run.save_pretrained(trained, SFT)
    if run.is_main:
        if cfg["epochs"] == 0:
            model.to(run.device).save_pretrained(SFT)
        tokenizer.save_pretrained(SFT)
        write_model_card(SFT, "sft", params, cfg, "sft", model_cfg["base"], prepared("sft"))
        # The saved model, reloaded: what every later stage sees, whatever engine trained it.
        model = modeling.load_causal_lm(SFT).to(run.device) if run.sharded else model
        gold = data.read_optional_jsonl(check_set("gold"))  # the built-in task's gold prompts; none for user data
        answers = generate_answers(model, tokenizer, [g["prompt"] for g in gold], cfg["eval_max_new_tokens"],
                                   desc="gold answers", max_length=model_cfg["max_length"])
        metrics["gold_accuracy"] = gold_accuracy(gold, answers)
        metrics["parameters"] = total
        log.info("gold accuracy of greedy answers: %s", metrics["gold_accuracy"])
    run.end({k: metrics.get(k) for k in ("gold_accuracy", "parameters", "truncated", "boundary_merges")})


if __name__ == "__main__":
    with exit_on_user_error("sft"):
        main()
