"""prepare: training and held-out rows and SFT demonstrations under data/prepared/.

It also fixes the tokenizer (data/prepared/tokenizer): the base model's, or for `model.base: scratch`
a byte-level BPE trained here, so lengths are decided in the model's own tokens.
Source `grammar` generates the built-in grammar-tutor task from `seed`, with its gold, validation and judge sets
in data/prepared/checks/; any other source is a file under data/raw/ (yaml, jsonl, json, csv, parquet) of
preference pairs or of unpaired feedback (formats.py), which dvc.yaml lists as a dependency, so editing it
reruns this stage and whatever its outputs feed. Rows are fitted to `model.max_length` (length_rule.py: cut, or
dropped under `data.truncation: drop`), exact duplicates dropped or refused (`data.duplicates`), all counted in
metrics/prepare.json. Everything is validated before the first file is written, so a bad input leaves
no partial outputs.
"""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging
import os

from preftune.data import dataset, formats, length_rule, task
from preftune.data.encoding import Encoder
from preftune.model import loading, scratch
from preftune.pipeline import files
from preftune.pipeline.errors import ConfigError, DataError, exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import CHECKS, PREPARE_METRICS, RAW, TOKENIZER, check_set, prepared

log = logging.getLogger("prepare")


def built_in_task(seed: int, cfg: dict) -> dict[str, list[dict]]:
    for key, allowed in (("tutor_noise", task.CATEGORIES), ("rejected_kinds", ("habit",) + task.ANSWER_KINDS)):
        for name in cfg[key]:
            if name not in allowed:
                raise ConfigError(f"params.yaml: data.{key}: unknown key '{name}'; use one of {', '.join(allowed)}")
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


def load_user_rows(source: str, fmt: str | None, render) -> list[dict]:
    check_source(source)
    return formats.load_pairs(source, fmt, render_messages=render)


def scratch_tokenizer_texts(rows: list[dict], sft: list[dict] | None) -> list[str]:
    """What a from-scratch tokenizer learns from: the SFT demonstrations of the built-in task, or every
    prompt and answer of a user dataset (its SFT set, the training rows' good answers, comes later)."""
    if sft is not None:
        return [d["prompt"] + d["response"] for d in sft]
    return [r["prompt"] + r[k] for r in rows for k in formats.answer_fields(r)]


def sft_demos(train: list[dict]) -> list[dict]:
    """A user dataset's SFT set: the reference policy imitates the training rows' good answers (the chosen
    answer of a pair, the desirable completions of unpaired feedback), cut where prepare cut them."""
    field = "completion" if formats.is_unpaired(train) else "chosen"
    demos = []
    for row in train:
        if row.get("label", True):
            demo = {"prompt": row["prompt"], "response": row[field]}
            if row.get(f"{field}_cut"):
                demo["response_cut"] = True
            demos.append(demo)
    if not demos:
        raise DataError("data.source: the training rows have no desirable completion (label true) for the SFT "
                        "policy to imitate; add some, or set sft.epochs: 0 with a pretrained model.base")
    return demos


def write_checks(checks: dict[str, list[dict]]) -> None:
    """data/prepared/checks/: the built-in task's gold, validation and judge sets, or for a user dataset only
    its README (a user dataset has no gold checker; a non-empty folder keeps DVC from warning about it)."""
    os.makedirs(CHECKS, exist_ok=True)
    for name in ("gold", "validation", "judge"):
        if os.path.exists(check_set(name)) and name not in checks:
            os.remove(check_set(name))
    for name, rows in checks.items():
        files.write_jsonl(check_set(name), rows)
    what = (", ".join(f"{name}.jsonl ({len(rows)} rows)" for name, rows in checks.items()) if checks
            else "nothing: this dataset has no gold checker")
    with files.atomic_open(f"{CHECKS}/README.md") as f:
        f.write(f"The built-in task's extra sets for checking models (gold, validation, judge). Here: {what}.\n")


def drop_duplicates(pairs: list[dict], policy: str, source: str) -> tuple[list[dict], int]:
    repeats = dataset.find_duplicates(pairs)
    if repeats and policy == "error":
        row, first = repeats[0]
        same = "completion and label" if formats.is_unpaired(pairs) else "chosen and rejected"
        raise DataError(f"{source}: row {row + 1}: duplicate of row {first + 1} (same prompt, {same}); "
                        "drop one of the two rows, or set data.duplicates: drop")
    drop = {i for i, _ in repeats}
    return [p for i, p in enumerate(pairs) if i not in drop], len(drop)


def main() -> None:
    params = start_stage("prepare", __doc__)
    seed, cfg = params["seed"], section(params, "data")

    model_cfg = section(params, "model")
    max_length = model_cfg["max_length"]
    max_prompt = length_rule.default_prompt_length(max_length, model_cfg["max_prompt_length"])  # < max_length
    from_scratch = model_cfg["base"] == "scratch"
    if cfg["source"] != "grammar":
        check_source(cfg["source"])  # before a tokenizer is loaded: a wrong path fails in a second
    # The model's tokenizer decides lengths and renders conversations: a pretrained one is loaded first
    # (its chat template renders the rows); a scratch one is trained on the rows, rendered as plain lines.
    tokenizer = None if from_scratch else loading.load_tokenizer(model_cfg["base"], model_cfg["trust_remote_code"])
    render = formats.renderer(tokenizer) if tokenizer is not None else formats.render_plain
    if cfg["source"] == "grammar":  # a generator may repeat a pair by chance: that is sampling, not a bad row
        generated, duplicates = built_in_task(seed, cfg), 0
        rows, sft = generated["pairs"], generated["sft"]
        checks = {k: generated[k] for k in ("gold", "validation", "judge")}
    else:  # a user dataset has no gold checker: no gold or validation prompts, no fresh judge pairs
        rows, sft, checks = load_user_rows(cfg["source"], cfg["format"], render), None, {}
        rows, duplicates = drop_duplicates(rows, cfg["duplicates"], cfg["source"])
    n_read = len(rows) + duplicates
    if from_scratch:
        tokenizer = scratch.train_tokenizer(scratch_tokenizer_texts(rows, sft), model_cfg["vocab_size"])
    loading.ensure_pad_token(tokenizer)
    rows, lengths = length_rule.fit_rows(rows, Encoder(tokenizer, max_length), max_prompt, cfg["truncation"], render)
    if not rows:
        raise ConfigError(f"params.yaml: model.max_length: {max_length} tokens leave no room "
                          "for any row; raise it")
    # A conversation keeps its prompt's messages: evaluate and the rounds cut prompts by the same rule (length_rule.py).
    rows = [{**{k: v for k, v in r.items() if k != "messages"},
             **({"messages": {"prompt": r["messages"]["prompt"]}} if "messages" in r else {})} for r in rows]
    unpaired = formats.is_unpaired(rows)
    train, heldout = dataset.split_by_prompt(rows, cfg["heldout"], seed)
    if sft is None:
        sft = sft_demos(train)
    train, swapped = dataset.swap_labels(train, cfg["label_noise"], seed)

    for name, split in (("train", train), ("heldout", heldout), ("sft", sft)):
        files.write_jsonl(prepared(name), split)
    write_checks(checks)
    tokenizer.save_pretrained(TOKENIZER)
    unit = "rows" if unpaired else "pairs"
    metrics = {
        unit: {"train": len(train), "heldout": len(heldout)},
        "sft_demos": len(sft),
        **{f"{name}_{'pairs' if name == 'judge' else 'prompts'}": len(checks[name]) for name in checks},
        "rows_read": n_read,
        "duplicates_dropped": duplicates,
        "length": lengths,
        "label_swapped": swapped,
        "train_lengths": dataset.length_stats(train),
    }
    if cfg["source"] == "grammar":  # what the built-in task's rows are made of
        metrics.update({"train_by_category": dataset.count_by(train, "category"),
                        "train_by_rejected_kind": dataset.count_by(train, "rejected_kind"),
                        "sft_by_tutor_kind": dataset.count_by(sft, "tutor_kind")})
    files.write_json(PREPARE_METRICS, metrics)
    answers = formats.answer_fields(rows[0])
    log.info("%d rows read, %d duplicates dropped; fitted to %d tokens (prompts up to %d, truncation: %s): "
             "%d rows cut (%d prompts lost %d tokens: %d old turns dropped, %d cut inside an earlier turn, %d inside "
             "the last user turn, %d as text; %s), %d dropped (%d answer too long, %d nothing left, %d identical "
             "after the cut)",
             n_read, duplicates, max_length, max_prompt, cfg["truncation"], lengths["rows_cut"],
             lengths["prompts_cut"], lengths["prompt_tokens_removed"], lengths["prompt_turns_dropped"],
             lengths["prompts_cut_in_earlier_turn"], lengths["prompts_cut_in_last_turn"],
             lengths["prompts_cut_as_text"],
             ", ".join(f"{lengths[f + '_cut']} {f} answers lost {lengths[f + '_tokens_removed']} tokens"
                       for f in answers),
             sum(lengths[k] for k in ("dropped_answer_too_long", "dropped_nothing_left", "dropped_identical_after_cut")),
             lengths["dropped_answer_too_long"], lengths["dropped_nothing_left"], lengths["dropped_identical_after_cut"])
    log.info("%d train / %d held-out %s%s, %d SFT demonstrations%s; %d labels swapped", len(train), len(heldout),
             unit, " (unpaired feedback: train it with dpo.loss: kto)" if unpaired else "", len(sft),
             "".join(f", {len(r)} {n} {'pairs' if n == 'judge' else 'prompts'}" for n, r in checks.items()),
             swapped)


if __name__ == "__main__":
    with exit_on_user_error("prepare"):
        main()
