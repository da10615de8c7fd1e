"""The prompt sets an evaluation reports on.

    heldout      the held-out rows, one record per prompt (unpaired feedback has several rows per prompt)
    validation   the built-in task's fresh prompts for choosing settings (empty for a user dataset)
    gold         the built-in task's fresh prompts for the reported gold figures (empty for a user dataset)

and the preference pairs that test the judge: the held-out rows and the built-in task's fresh judge pairs.
`evaluate.prompts` caps every one of them (a seeded draw, in file order): what an expensive judge or a large
held-out set costs. generate answers each set in this order; judge and evaluate read the answers back by position."""

from __future__ import annotations

import random

from ..data.formats import is_unpaired
from ..pipeline import files
from ..pipeline.paths import EVAL_SETS, check_set, prepared

POLICIES = ("sft", "dpo")


def eval_sets(limit: int | None, seed: int) -> dict[str, list[dict]]:
    """Each evaluation set's records, by name (paths.EVAL_SETS), at most `limit` of each (evaluate.prompts)."""
    found = {"heldout": one_per_prompt(files.read_jsonl(prepared("heldout"))),
             "validation": files.read_optional_jsonl(check_set("validation")),
             "gold": files.read_optional_jsonl(check_set("gold"))}
    return {name: at_most(found[name], limit, seed) for name in EVAL_SETS}


def judge_pairs(limit: int | None, seed: int) -> dict[str, list[dict]]:
    """The preference rows that test the judge, by name: pairs_heldout and pairs_fresh, at most `limit` of each."""
    return {"pairs_heldout": at_most(files.read_jsonl(prepared("heldout")), limit, seed),
            "pairs_fresh": at_most(files.read_optional_jsonl(check_set("judge")), limit, seed)}


def at_most(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """`rows`, or `limit` of them drawn with `seed`, kept in file order."""
    if limit is None or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]


def one_per_prompt(rows: list[dict]) -> list[dict]:
    """Unpaired feedback often has several rows per prompt (a good and a bad answer): generate once per prompt.
    Pairs keep one record per row, as the lab counts its 50 held-out prompts."""
    if not is_unpaired(rows):
        return rows
    return list({r["prompt"]: r for r in reversed(rows)}.values())[::-1]
