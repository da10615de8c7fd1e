"""Pairwise judging by an LLM: the prompt template, the strict reading of its answer, and both answer orders.

A template (judges/*.yaml, the user's to edit) is a system message, a user message with the slots {instruction},
{output_a} and {output_b}, the exact verdict strings the judge is told to answer with, and how they are matched:

    match: exact        the whole answer, surrounding whitespace removed, is one verdict string (AlpacaEval's style)
    match: first_word   the answer's first word, stripped of the punctuation around it, is one verdict string
                        ("A", "A.", "A:"; a small model seldom stops after one letter)
    match: marker       exactly one verdict string appears in the answer, once (MT-Bench's "[[A]]" after a review)

Anything else is unparseable: counted and reported, never guessed. Every comparison is asked twice, the answers
swapped the second time, and the two readings are combined as MT-Bench combines them: a verdict that flips with
the order is a tie (position bias cancels), and one unparseable reading leaves the comparison unjudged.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import yaml

from ..pipeline.errors import ConfigError

SLOTS = ("instruction", "output_a", "output_b")
MATCHES = ("exact", "first_word", "marker")
PUNCTUATION = ".,:;!?\"'()*"
VERDICTS = ("a", "b", "tie")


@dataclass(frozen=True)
class Template:
    path: str
    system: str | None
    user: str
    verdicts: dict[str, str]  # "a" / "b" (/ "tie") -> the exact string the judge answers with
    match: str
    max_new_tokens: int

    @classmethod
    def load(cls, path: str) -> "Template":
        """The template in `path`, checked: one line naming the file and what to fix, else the template."""
        def bad(what: str) -> ConfigError:
            return ConfigError(f"{path}: {what} (params.yaml evaluate.judge_template names this file)")

        try:
            with open(path, encoding="utf-8") as f:
                spec = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"params.yaml: evaluate.judge_template: no file {path}; give a template file "
                              "(judges/ holds the shipped ones)") from None
        except yaml.YAMLError as err:
            raise bad(f"not valid YAML ({' '.join(str(err).split())[:120]}); fix the file") from None
        if not isinstance(spec, dict):
            raise bad("expected a mapping with user, verdicts, match and max_new_tokens; see judges/alpaca_eval.yaml")
        known = {"system", "user", "verdicts", "match", "max_new_tokens"}
        if set(spec) - known or {"user", "verdicts", "match", "max_new_tokens"} - set(spec):
            raise bad(f"keys {sorted(spec)} should be {sorted(known)} (system optional); fix the file")
        user, system = spec["user"], spec.get("system")
        if not isinstance(user, str) or (system is not None and not isinstance(system, str)):
            raise bad("system and user must be text; fix the file")
        slots = {name for text in (user, system or "") for _, name, _, _ in string.Formatter().parse(text) if name}
        if set(SLOTS) - slots:
            missing = ", ".join(f"{{{s}}}" for s in SLOTS if s not in slots)
            raise bad(f"the prompt lacks the answer slots {missing}; the judge must see the instruction and both "
                      "answers: add them to user")
        if slots - set(SLOTS):
            raise bad(f"unknown slots {sorted(slots - set(SLOTS))}; only {{instruction}}, {{output_a}} and "
                      "{output_b} are filled (write a literal brace as {{ or }})")
        verdicts = spec["verdicts"]
        if not isinstance(verdicts, dict) or not {"a", "b"} <= set(verdicts) <= set(VERDICTS) \
                or not all(isinstance(v, str) and v.strip() for v in verdicts.values()) \
                or len(set(verdicts.values())) != len(verdicts):
            raise bad("verdicts must map a and b (and optionally tie) to distinct non-empty strings, e.g. "
                      "{a: A, b: B}; fix the file")
        if spec["match"] not in MATCHES:
            raise bad(f"match: {spec['match']!r} must be one of {', '.join(MATCHES)}; fix the file")
        if isinstance(spec["max_new_tokens"], bool) or not isinstance(spec["max_new_tokens"], int) \
                or spec["max_new_tokens"] < 1:
            raise bad("max_new_tokens must be an integer >= 1; fix the file")
        return cls(path, system, user, dict(verdicts), spec["match"], spec["max_new_tokens"])

    def messages(self, instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
        """The chat the judge is asked: the system message (if any) and the filled user message."""
        slots = {"instruction": instruction, "output_a": output_a, "output_b": output_b}
        chat = [{"role": "system", "content": self.system.format(**slots)}] if self.system else []
        return chat + [{"role": "user", "content": self.user.format(**slots)}]

    def parse(self, answer: str) -> str | None:
        """"a", "b" or "tie" from the judge's answer, by the template's rule; None when it is not exactly one."""
        if self.match in ("exact", "first_word"):
            words = answer.split()
            said = answer.strip() if self.match == "exact" else (words[0].strip(PUNCTUATION) if words else "")
            found = [v for v, text in self.verdicts.items() if said == text]
        else:
            found = [v for v, text in self.verdicts.items() if answer.count(text) == 1]
            if any(answer.count(text) > 1 for text in self.verdicts.values()):
                found = []
        return found[0] if len(found) == 1 else None


def combine(first: str | None, swapped: str | None) -> str | None:
    """The verdict for the answer shown first as A, from its two readings: `first` (it was A) and `swapped` (it was
    B, so "b" means it won). Agreeing readings give their verdict, disagreeing ones a tie (MT-Bench: a verdict that
    flips with the order is no verdict), and an unparseable reading gives None."""
    if first is None or swapped is None:
        return None
    as_first = {"a": "a", "b": "b", "tie": "tie"}[first]
    as_swapped = {"a": "b", "b": "a", "tie": "tie"}[swapped]
    return as_first if as_first == as_swapped else "tie"


def position_consistency(records: list[dict]) -> float | None:
    """The share of judgments whose verdict survives swapping the two answers: both orders read, and agreeing. A
    reward model's judgment (it has `rewards`: each answer scored alone) survives by construction; identical answers
    (never asked) and judgments with an unreadable order are left out. None when no judgment counts."""
    kept = agreeing = 0
    for record in records:
        if "rewards" in record:
            kept, agreeing = kept + 1, agreeing + 1
        elif "readings" in record and None not in (r["verdict"] for r in record["readings"]):
            first, swapped = (r["verdict"] for r in record["readings"])
            kept += 1
            agreeing += combine(first, swapped) == first
    return agreeing / kept if kept else None
