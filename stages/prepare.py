"""prepare: training and held-out rows and SFT demonstrations under data/prepared/.

It also fixes the tokenizer (data/prepared/tokenizer): the base model's, or for `model.base: scratch`
a byte-level BPE trained here, so lengths are decided in the model's own tokens.
Source `grammar` generates the built-in grammar-tutor task from `seed`, with its gold, validation and judge sets
in data/prepared/checks/; any other source is a file under data/raw/ (yaml, jsonl, json, csv, parquet) of
preference pairs or of unpaired feedback (formats.py), which dvc.yaml lists as a dependency, so editing it
reruns this stage and whatever its outputs feed. Rows are fitted to `model.max_length` (length_rule.py, run by
fitting.py: cut, or dropped under `data.truncation: drop`), exact duplicates dropped or refused
(`data.duplicates`), all counted in metrics/prepare.json. Everything is validated before the first file is written,
so a bad input leaves no partial outputs.
"""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from preftune.data import dataset, fitting, formats, length_rule, task
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


def scratch_tokenizer_texts(rows: Iterable[dict], sft: list[dict] | None) -> Iterator[str]:
    """What a from-scratch tokenizer learns from: the SFT demonstrations of the built-in task, or every
    prompt and answer of a user dataset (its SFT set, the training rows' good answers, comes later)."""
    if sft is not None:
        return (d["prompt"] + d["response"] for d in sft)
    return (r["prompt"] + r[k] for r in rows for k in formats.answer_fields(r))


def sft_demo(row: dict) -> dict | None:
    """A user dataset's SFT demonstration from a training row: its good answer (the chosen answer of a pair, a
    desirable completion of unpaired feedback), cut where prepare cut it; None for an undesirable completion."""
    field = "completion" if "completion" in row else "chosen"
    if not row.get("label", True):
        return None
    demo = {"prompt": row["prompt"], "response": row[field]}
    if row.get(f"{field}_cut"):
        demo["response_cut"] = True
    return demo


NO_DEMOS = ("data.source: the training rows have no desirable completion (label true) for the SFT policy to imitate; "
            "add some, or set sft.epochs: 0 with a pretrained model.base")


class Distinct:
    """The source's rows as they are read, exact duplicates dropped (or refused: data.duplicates: error), counted
    in `read` and `dropped`. A key digest per row is kept, not the row."""

    def __init__(self, policy: str, source: str):
        self.policy, self.source, self.read, self.dropped = policy, source, 0, 0

    def rows(self, rows: Iterable[dict]) -> Iterator[dict]:
        first: dict[bytes, int] = {}
        self.read = self.dropped = 0
        for i, row in enumerate(rows):
            self.read += 1
            key = hashlib.blake2b(json.dumps(dataset.row_key(row)).encode(), digest_size=16).digest()
            if key not in first:
                first[key] = i
                yield row
                continue
            if self.policy == "error":
                same = "completion and label" if "completion" in row else "chosen and rejected"
                raise DataError(f"{self.source}: row {i + 1}: duplicate of row {first[key] + 1} (same prompt, "
                                f"{same}); drop one of the two rows, or set data.duplicates: drop")
            self.dropped += self.policy == "drop"
            if self.policy == "keep":  # the built-in task: a generator may repeat a pair by chance (sampling)
                yield row
        if not self.read:
            raise DataError(f"{self.source}: no rows; add at least one row with 'chosen' and 'rejected' (and usually "
                            "'prompt')")


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
    if cfg["source"] == "grammar":
        generated = built_in_task(seed, cfg)
        sft, checks = generated["sft"], {k: generated[k] for k in ("gold", "validation", "judge")}
        distinct = Distinct("keep", "grammar")
        source_rows = lambda: distinct.rows(generated["pairs"])  # noqa: E731
    else:  # a user dataset has no gold checker: no gold or validation prompts, no fresh judge pairs; read as it goes
        sft, checks = None, {}
        distinct = Distinct(cfg["duplicates"], cfg["source"])
        source_rows = lambda: distinct.rows(formats.iter_pairs(cfg["source"], cfg["format"], render))  # noqa: E731
    if from_scratch:
        tokenizer = scratch.train_tokenizer(scratch_tokenizer_texts(source_rows(), sft), model_cfg["vocab_size"])
    loading.ensure_pad_token(tokenizer)
    fitter = fitting.Fitting(Encoder(tokenizer, max_length), max_prompt, cfg["truncation"], render,
                             workers=len(os.sched_getaffinity(0)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prepare-") as spool_dir:
        # One pass: read, drop duplicates, fit, and spool the kept rows to disk; what the split, the label noise and
        # the statistics need of each row stays in memory (a prompt digest, answer word counts), not the row.
        spool, keys, words, kinds = Path(spool_dir) / "fitted.jsonl", [], [], []
        with open(spool, "w", encoding="utf-8", newline="") as out:
            for row in fitter.kept(source_rows()):
                # A conversation keeps its prompt's messages: evaluate and the rounds cut prompts by the same rule.
                row = {**{k: v for k, v in row.items() if k != "messages"},
                       **({"messages": {"prompt": row["messages"]["prompt"]}} if "messages" in row else {})}
                out.write(files.jsonl_line(row))
                keys.append(dataset.prompt_key(row["prompt"]))
                words.append(dataset.answer_words(row))
                if cfg["source"] == "grammar":  # the built-in task's rows say what they are made of
                    kinds.append({k: row[k] for k in ("category", "rejected_kind")})
        n_read, duplicates, lengths = distinct.read, distinct.dropped, fitter.stats
        seconds = time.perf_counter() - started
        if not keys:
            raise ConfigError(f"params.yaml: model.max_length: {max_length} tokens leave no room "
                              "for any row; raise it")
        unpaired = isinstance(words[0][1], bool)
        train_idx, heldout_idx = dataset.split_indices(keys, cfg["heldout"], seed)
        swapped = dataset.swapped_indices(len(train_idx), cfg["label_noise"], seed)
        if sft is None and not any(not unpaired or words[i][1] for i in train_idx):
            raise DataError(NO_DEMOS)
        # after every check: a bad input is one line
        log.info("%d rows read and fitted in %.1f s (%.0f rows/s; tokenizing %s, in %d processes)", n_read, seconds,
                 n_read / max(seconds, 1e-9), fitter.tokenizing, fitter.workers)
        heldout_set, n_demos = set(heldout_idx), 0
        with files.atomic_open(prepared("train")) as train_out, files.atomic_open(prepared("heldout")) as held_out, \
                files.atomic_open(prepared("sft")) as sft_out:
            j = 0  # the row's place among the training rows
            for i, row in enumerate(files.iter_jsonl(spool)):
                if i in heldout_set:
                    held_out.write(files.jsonl_line(row))
                    continue
                demo = sft_demo(row) if sft is None else None  # from the row as read, before any label noise
                if demo is not None:
                    sft_out.write(files.jsonl_line(demo))
                    n_demos += 1
                train_out.write(files.jsonl_line(dataset.swap_label(row) if j in swapped else row))
                j += 1
            if sft is not None:
                for demo in sft:
                    sft_out.write(files.jsonl_line(demo))
                n_demos = len(sft)
    write_checks(checks)
    tokenizer.save_pretrained(TOKENIZER)
    unit = "rows" if unpaired else "pairs"
    train_words = [dataset.swapped_words(words[i]) if j in swapped else words[i] for j, i in enumerate(train_idx)]
    metrics = {
        unit: {"train": len(train_idx), "heldout": len(heldout_idx)},
        "sft_demos": n_demos,
        **{f"{name}_{'pairs' if name == 'judge' else 'prompts'}": len(checks[name]) for name in checks},
        "rows_read": n_read,
        "duplicates_dropped": duplicates,
        "length": lengths,
        "label_swapped": len(swapped),
        "train_lengths": dataset.word_stats(train_words),
    }
    if cfg["source"] == "grammar":  # what the built-in task's rows are made of
        train_kinds = [kinds[i] for i in train_idx]
        metrics.update({"train_by_category": dataset.count_by(train_kinds, "category"),
                        "train_by_rejected_kind": dataset.count_by(train_kinds, "rejected_kind"),
                        "sft_by_tutor_kind": dataset.count_by(sft, "tutor_kind")})
    files.write_json(PREPARE_METRICS, metrics)
    answers = ("completion",) if unpaired else ("chosen", "rejected")
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
    log.info("%d train / %d held-out %s%s, %d SFT demonstrations%s; %d labels swapped", len(train_idx),
             len(heldout_idx), unit, " (unpaired feedback: train it with dpo.loss: kto)" if unpaired else "", n_demos,
             "".join(f", {len(r)} {n} {'pairs' if n == 'judge' else 'prompts'}" for n, r in checks.items()),
             len(swapped))


if __name__ == "__main__":
    with exit_on_user_error("prepare"):
        main()
