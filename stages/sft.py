"""sft: the reference policy. `model.base: scratch` trains a small GPT-2 from nothing (on the tokenizer
that prepare trained); any other value (a local directory, a GGUF file, a hub id) is loaded with
AutoModelForCausalLM, and `sft.epochs: 0` keeps it as it is. Saves models/sft, always a plain
safetensors checkpoint (save_pretrained), and logs metrics/sft (DVCLive)."""

import logging

from preftune import data, modeling
from preftune.errors import exit_on_user_error
from preftune.generation import generate_answers, gold_accuracy
from preftune.params import section, start_stage
from preftune.paths import SFT, TOKENIZER, check_set, prepared
from preftune.supervised import train_sft
from preftune.training import Run, enable_checkpointing, log_metrics

log = logging.getLogger("sft")


def main() -> None:
    params = start_stage(__doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "sft")
    run = Run(model_cfg["device"], cfg, "sft", params)  # one process, or this rank of a torchrun / accelerate launch
    modeling.seed_everything(seed)  # the same on every rank: every rank builds the same initial model

    demos = data.read_jsonl(prepared("sft"))
    heldout = data.read_jsonl(prepared("heldout"))
    gold = data.read_optional_jsonl(check_set("gold"))  # the built-in task's gold prompts; none for user data
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

    live = run.live("metrics/sft")
    metrics = {}
    if cfg["epochs"] > 0:
        modeling.seed_everything(seed + run.rank)  # dropout differs per rank
        metrics, prepared_model = train_sft(run, model, tokenizer, demos, heldout, cfg, model_cfg["max_length"],
                                            seed, live)
        run.save_pretrained(prepared_model, SFT)
    if run.is_main:
        if cfg["epochs"] == 0:
            model.to(run.device).save_pretrained(SFT)
        tokenizer.save_pretrained(SFT)
        # The saved model, reloaded: what every later stage sees, whatever engine trained it.
        model = modeling.load_causal_lm(SFT).to(run.device) if run.sharded else model
        answers = generate_answers(model, tokenizer, [g["prompt"] for g in gold], cfg["eval_max_new_tokens"],
                                   desc="gold answers", max_length=model_cfg["max_length"])
        metrics["gold_accuracy"] = gold_accuracy(gold, answers)
        metrics["parameters"] = total
        log.info("gold accuracy of greedy answers: %s", metrics["gold_accuracy"])
        log_metrics(live, {k: v for k, v in metrics.items() if k in ("gold_accuracy", "parameters", "truncated",
                                                                     "boundary_merges")})
    live.end()
    run.finish()


if __name__ == "__main__":
    with exit_on_user_error("sft"):
        main()
