"""prepare: preference pairs, SFT demonstrations and gold prompts under data/prepared/.

It also fixes the tokenizer (data/prepared/tokenizer): the base model's, or for `model.base: scratch`
a byte-level BPE trained here, so lengths are decided in the model's own tokens.
Source `grammar` generates the built-in grammar-tutor task from `seed`; any other source is a
preference file under data/raw/ (yaml, jsonl, json, csv, parquet), which dvc.yaml lists as a dependency,
so editing it reruns this stage and whatever its outputs feed. Pairs are fitted to `model.max_length`
(budget.py) and exact duplicates dropped or refused (`data.duplicates`), all counted in
metrics/prepare.json. Everything is validated before the first file is written, so a bad input leaves
no partial outputs.
"""

import logging
import os

from preftune import budget, data, formats, modeling, task
from preftune.errors import ConfigError, DataError, exit_on_user_error
from preftune.params import section, start_stage
from preftune.paths import RAW, TOKENIZER, prepared

log = logging.getLogger("prepare")


def built_in_task(seed: int, cfg: dict) -> dict[str, list[dict]]:
    for key, allowed in (("tutor_noise", task.CATEGORIES), ("rejected_kinds", ("habit",) + task.ANSWER_KINDS)):
        for name in cfg[key]:
            if name not in allowed:
                raise ConfigError(f"params.yaml: data.{key}: unknown key '{name}'; use one of {', '.join(allowed)}")
    if not any(cfg["rejected_kinds"].values()):
        raise ConfigError("params.yaml: data.rejected_kinds: every weight is 0; give at least one kind a weight")
    return task.generate(seed, cfg["pairs"], cfg["sft_demos"], cfg["gold_prompts"], cfg["tutor_noise"],
                         cfg["rejected_kinds"], cfg["validation_prompts"], cfg["judge_pairs"])


def check_source(source: str) -> None:
    """A dataset must live under data/raw/, the folder dvc.yaml tracks; anywhere else DVC would not see it change."""
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        raise ConfigError(f"params.yaml: data.source: '{source}': Hub datasets are fetched once so that runs stay "
                          f"offline and tracked: run `python stages/fetch_hub.py {name} --split {split or 'train'}` "
                          f"(network and pip install '.[hub]' needed) and set data.source to the file it writes "
                          f"under {RAW}/")
    path = os.path.normpath(source)
    inside = not os.path.isabs(path) and not path.startswith("..")
    if inside and (path + os.sep).startswith(RAW + os.sep):
        return
    name = os.path.basename(path)
    if not os.path.splitext(name)[1] and not os.path.exists(source):
        raise ConfigError(f"params.yaml: data.source: '{source}' is neither the built-in 'grammar' nor a dataset "
                          f"file; use 'grammar' or a .yaml/.jsonl/.json/.csv/.parquet file under {RAW}/")
    if inside:
        fix = f"move it there (git mv {source} {RAW}/{name}, or dvc add it there)"
    else:
        fix = (f"bring it in with `cp {source} {RAW}/ && dvc add {RAW}/{name}` or "
               f"`dvc import-url {source} {RAW}/{name}`")
    raise ConfigError(f"params.yaml: data.source: '{source}' is not under {RAW}/, so DVC would not rerun prepare "
                      f"when it changes; {fix}, then set data.source: {RAW}/{name}")


def load_user_pairs(source: str, fmt: str | None, render) -> list[dict]:
    check_source(source)
    return formats.load_pairs(source, fmt, render_messages=render)


def scratch_tokenizer_texts(pairs: list[dict], sft: list[dict] | None) -> list[str]:
    """What a from-scratch tokenizer learns from: the SFT demonstrations of the built-in task, or every
    prompt and answer of a user dataset (its SFT set, the training pairs' chosen answers, comes later)."""
    if sft is not None:
        return [d["prompt"] + d["response"] for d in sft]
    return [p["prompt"] + p[k] for p in pairs for k in ("chosen", "rejected")]


def drop_duplicates(pairs: list[dict], policy: str, source: str) -> tuple[list[dict], int]:
    repeats = data.find_duplicates(pairs)
    if repeats and policy == "error":
        row, first = repeats[0]
        raise DataError(f"{source}: row {row + 1}: duplicate of row {first + 1} (same prompt, chosen and rejected); "
                        "drop one of the two rows, or set data.duplicates: drop")
    drop = {i for i, _ in repeats}
    return [p for i, p in enumerate(pairs) if i not in drop], len(drop)


def main() -> None:
    params = start_stage(__doc__)
    seed, cfg = params["seed"], section(params, "data")

    model_cfg = section(params, "model")
    scratch = model_cfg["base"] == "scratch"
    if cfg["source"] != "grammar":
        check_source(cfg["source"])  # before a tokenizer is loaded: a wrong path fails in a second
    # The model's tokenizer decides lengths and renders conversations: a pretrained one is loaded first
    # (its chat template renders the rows); a scratch one is trained on the rows, rendered as plain lines.
    tokenizer = None if scratch else modeling.load_tokenizer(model_cfg["base"], model_cfg["trust_remote_code"])
    render = (tokenizer is not None and modeling.chat_renderer(tokenizer)) or formats.render_plain
    if cfg["source"] == "grammar":  # a generator may repeat a pair by chance: that is sampling, not a bad row
        generated, duplicates = built_in_task(seed, cfg), 0
        pairs, sft, gold, validation, judge = (generated[k] for k in ("pairs", "sft", "gold", "validation", "judge"))
    else:  # a user dataset has no gold checker: no gold or validation prompts, no fresh judge pairs
        pairs, sft, gold, validation, judge = load_user_pairs(cfg["source"], cfg["format"], render), None, [], [], []
        pairs, duplicates = drop_duplicates(pairs, cfg["duplicates"], cfg["source"])
    if scratch:
        tokenizer = modeling.train_tokenizer(scratch_tokenizer_texts(pairs, sft), model_cfg["vocab_size"])
    modeling.ensure_pad_token(tokenizer)
    pairs, lengths = budget.fit_pairs(pairs, budget.TokenCounter(tokenizer), model_cfg["max_length"], render)
    if not pairs:
        raise ConfigError(f"params.yaml: model.max_length: {model_cfg['max_length']} tokens leave no room "
                          "for any response; raise it")
    pairs = [{k: v for k, v in p.items() if k != "messages"} for p in pairs]
    train, heldout = data.split_by_prompt(pairs, cfg["heldout"], seed)
    if sft is None:  # a user dataset: the reference policy imitates the chosen answers
        sft = [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]
    train, swapped = data.swap_labels(train, cfg["label_noise"], seed)

    for name, rows in (("train", train), ("heldout", heldout), ("sft", sft), ("gold", gold),
                       ("validation", validation), ("judge", judge)):
        data.write_jsonl(prepared(name), rows)
    tokenizer.save_pretrained(TOKENIZER)
    metrics = {
        "pairs": {"train": len(train), "heldout": len(heldout)},
        "sft_demos": len(sft),
        "gold_prompts": len(gold),
        "validation_prompts": len(validation),
        "judge_pairs": len(judge),
        "duplicates_dropped": duplicates,
        "length": lengths,
        "label_swapped": swapped,
        "train_lengths": data.length_stats(train),
        "train_by_category": data.count_by(train, "category"),
        "train_by_rejected_kind": data.count_by(train, "rejected_kind"),
        "sft_by_tutor_kind": data.count_by(sft, "tutor_kind"),
    }
    data.write_json("metrics/prepare.json", metrics)
    log.info("%d train / %d held-out pairs, %d SFT demonstrations, %d gold prompts; %d duplicates dropped; "
             "%d pairs dropped (response longer than max_length), %d prompts lost turns, %d lost tokens; "
             "%d labels swapped", len(train), len(heldout), len(sft), len(gold), duplicates,
             lengths["dropped_response_too_long"], lengths["prompt_turns_dropped"], lengths["prompt_tokens_cut"],
             swapped)


if __name__ == "__main__":
    with exit_on_user_error("prepare"):
        main()
