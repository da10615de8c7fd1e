"""The gold checker of the built-in grammar task, alone: the stages that score answers (sft, reward, evaluate)
import this module, not the task generator, so editing the generator does not rerun them."""

from __future__ import annotations


def is_correct(record: dict, response: str) -> bool:
    """Gold checker: the response's first line is exactly the sentence's known correct form.

    Whitespace is normalised; anything else (a wrong word, a missing full stop, chatter around
    the right sentence) is wrong. It reads only `record["correct"]`, never a pair's chosen text.
    """
    first_line = response.strip().split("\n", 1)[0] if response.strip() else ""
    return " ".join(first_line.split()) == " ".join(record["correct"].split())


def gold_verdicts(records: list[dict], answers: dict[str, list[str]]) -> dict[str, list[bool]]:
    """The checker's verdict on each policy's answer (answers: policy -> one answer per record) to each record."""
    return {m: [is_correct(r, a) for r, a in zip(records, answers[m])] for m in answers}


def gold_accuracy(records: list[dict], answers: list[str]) -> float | None:
    """Share of answers the gold checker accepts; None when the data has no gold checker."""
    if not records:
        return None
    return sum(is_correct(r, a) for r, a in zip(records, answers)) / len(records)
