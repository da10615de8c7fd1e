"""prepare: preference pairs, SFT demonstrations and gold prompts under data/prepared/.

Source `grammar` generates the built-in grammar-tutor task from `seed`; any other source is a
preference file (yaml, jsonl, json, csv, parquet) or `hf:<name>[:<split>]`. Everything is validated
before the first file is written, so a bad input leaves no partial outputs.
"""

import logging
import os

from preftune import data, formats, task
from preftune.errors import ConfigError, exit_on_user_error
from preftune.params import section, start_stage

OUT = "data/prepared"
log = logging.getLogger("prepare")


def built_in_task(seed: int, cfg: dict) -> tuple[list[dict], list[dict], list[dict]]:
    for key, allowed in (("tutor_noise", task.CATEGORIES), ("rejected_kinds", ("habit",) + task.ANSWER_KINDS)):
        for name, value in cfg[key].items():
            if name not in allowed:
                raise ConfigError(f"params.yaml: data.{key}: unknown key '{name}'; use one of {', '.join(allowed)}")
            if not isinstance(value, (int, float)) or not 0 <= value <= (1 if key == "tutor_noise" else float("inf")):
                raise ConfigError(f"params.yaml: data.{key}.{name}: {value!r} must be a number "
                                  + ("in [0, 1]" if key == "tutor_noise" else ">= 0"))
    if not any(cfg["rejected_kinds"].values()):
        raise ConfigError("params.yaml: data.rejected_kinds: every weight is 0; give at least one kind a weight")
    generated = task.generate(seed, cfg["pairs"], cfg["sft_demos"], cfg["gold_prompts"],
                              cfg["tutor_noise"], cfg["rejected_kinds"])
    return generated["pairs"], generated["sft"], generated["gold"]


def user_pairs(cfg: dict, model_cfg: dict) -> list[dict]:
    source = cfg["source"]
    if not source.startswith("hf:") and not os.path.exists(source) and not os.path.splitext(source)[1]:
        raise ConfigError(f"params.yaml: data.source: '{source}' is neither the built-in 'grammar' nor an existing "
                          "file; use 'grammar', a path to a .yaml/.jsonl/.json/.csv/.parquet file, or hf:<dataset>")
    render = None
    if model_cfg.get("base") != "scratch":  # conversational rows use the base model's chat template
        from preftune.modeling import chat_renderer
        render = chat_renderer(model_cfg)
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        return formats.load_hub_pairs(name, split or "train", render_messages=render)
    return formats.load_pairs(source, cfg.get("format"), render_messages=render)


def main() -> None:
    params = start_stage(__doc__)
    seed, cfg = params["seed"], section(params, "data")

    if cfg["source"] == "grammar":
        pairs, sft, gold = built_in_task(seed, cfg)
    else:
        pairs, sft, gold = user_pairs(cfg, section(params, "model")), None, []
    pairs, dropped = data.drop_long_rows(pairs, cfg["max_chars"])
    if not pairs:
        raise ConfigError(f"params.yaml: data.max_chars: {cfg['max_chars']} drops every pair; raise it")
    train, heldout = data.split_by_prompt(pairs, cfg["heldout"], seed)
    if sft is None:  # a user dataset: the reference policy imitates the chosen answers
        sft = [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]
    train, swapped = data.swap_labels(train, cfg["label_noise"], seed)

    data.write_jsonl(f"{OUT}/train.jsonl", train)
    data.write_jsonl(f"{OUT}/heldout.jsonl", heldout)
    data.write_jsonl(f"{OUT}/sft.jsonl", sft)
    data.write_jsonl(f"{OUT}/gold.jsonl", gold)
    metrics = {
        "pairs": {"train": len(train), "heldout": len(heldout)},
        "sft_demos": len(sft),
        "gold_prompts": len(gold),
        "dropped_too_long": dropped,
        "label_swapped": swapped,
        "train_lengths": data.length_stats(train),
        "train_by_category": data.count_by(train, "category"),
        "train_by_rejected_kind": data.count_by(train, "rejected_kind"),
        "sft_by_tutor_kind": data.count_by(sft, "tutor_kind"),
    }
    data.write_json("metrics/prepare.json", metrics)
    log.info("%d train / %d held-out pairs, %d SFT demonstrations, %d gold prompts; "
             "%d dropped as too long, %d labels swapped",
             len(train), len(heldout), len(sft), len(gold), dropped, swapped)


if __name__ == "__main__":
    with exit_on_user_error("prepare"):
        main()
