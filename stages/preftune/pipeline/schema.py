"""The one typed description of params.yaml: every key, its type and its allowed range or values.

Every stage validates the whole file against it first (params.start_stage), before any data or model is
read, so a wrong type, an out-of-range value, a missing key or a misspelt extra key is one line that names
the key and what to do, whichever stage meets it. Rules between keys of one section are one function per
section (RULES), run at the same moment. Library code trusts what passed here. Checks that need outside
knowledge (the grammar categories known to task.py, split sizes and batch sizes that fit a dataset) stay with
the code that owns that knowledge.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Number:
    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False  # low itself not allowed
    high_open: bool = False

    def problem(self, value) -> str | None:
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return f"must be {kind}{self.range()}"
        if value != value or (self.low is not None and (value < self.low or (self.low_open and value == self.low))) \
                or (self.high is not None and (value > self.high or (self.high_open and value == self.high))):
            return f"must be {kind}{self.range()}"
        return None

    def range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " " + " and ".join(parts) if parts else ""

    def bad_values(self) -> list:
        """Values a test can try: a wrong type, and one just outside each bound."""
        out = ["oops"]
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1)
        return out


@dataclass(frozen=True)
class CountOrFraction:
    """A whole count >= 1, or a fraction strictly between 0 and 1 (data.heldout: 50 or 0.1)."""

    def problem(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return "must be a count >= 1 or a fraction between 0 and 1"
        if isinstance(value, int):
            return None if value >= 1 else "must be a count >= 1 or a fraction between 0 and 1"
        return None if 0 < value < 1 else "must be a whole count >= 1 or a fraction between 0 and 1"

    def bad_values(self) -> list:
        return ["oops", 0, 1.5, -0.1]


@dataclass(frozen=True)
class Text:
    choices: tuple[str, ...] = ()

    def problem(self, value) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be " + (f"one of {', '.join(self.choices)}" if self.choices else "a non-empty string")
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        return None

    def bad_values(self) -> list:
        return [3] + (["no-such-choice"] if self.choices else [])


@dataclass(frozen=True)
class JudgeSpec:
    """evaluate.judge: reward, or rm:, llm: or openai: followed by a model (judging/judges.py)."""

    def problem(self, value) -> str | None:
        if value == "reward":
            return None
        kind, _, name = value.partition(":") if isinstance(value, str) else ("", "", "")
        if kind in ("rm", "llm", "openai") and name.strip():
            return None
        return "must be reward, rm:<model>, llm:<model> or openai:<model>"

    def bad_values(self) -> list:
        return [3, "gpt-4", "llm:"]


@dataclass(frozen=True)
class Flag:
    def problem(self, value) -> str | None:
        return None if isinstance(value, bool) else "must be true or false"

    def bad_values(self) -> list:
        return ["yes please"]


@dataclass(frozen=True)
class Nullable:
    inner: object

    def problem(self, value) -> str | None:
        if value is None:
            return None
        found = self.inner.problem(value)
        return f"{found}, or null" if found else None

    def bad_values(self) -> list:
        return self.inner.bad_values()


@dataclass(frozen=True)
class Names:
    """A list of non-empty strings, or one of a few keywords."""
    keywords: tuple[str, ...] = ()

    def problem(self, value) -> str | None:
        if isinstance(value, str) and value in self.keywords:
            return None
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return None
        return f"must be {' or '.join(self.keywords)} or a list of names" if self.keywords else "must be a list of names"

    def bad_values(self) -> list:
        return [[], 5]


@dataclass(frozen=True)
class Weights:
    """A mapping of free names to numbers (which names are allowed is the owner's check)."""
    each: Number

    def problem(self, value) -> str | None:
        if not isinstance(value, dict):
            return "must be a mapping of name: number"
        for name, weight in value.items():
            if self.each.problem(weight):
                return f"has {name}: {weight!r}; each value {self.each.problem(weight)}"
        return None

    def bad_values(self) -> list:
        return [[0.5], {"x": "oops"}]


@dataclass(frozen=True)
class Losses:
    """dpo.loss: one loss name, or a list of distinct names (a mixture, weighted by dpo.loss_weights)."""

    def problem(self, value) -> str | None:
        if isinstance(value, str):
            return None if value in LOSS_NAMES else f"must be one of {', '.join(LOSS_NAMES)}, or a list of them"
        if isinstance(value, list) and value and len(set(map(str, value))) == len(value) \
                and all(v in LOSS_NAMES + MIXTURE_ONLY for v in value):
            return None
        return (f"must be one of {', '.join(LOSS_NAMES)}, or a list of distinct names from them and "
                f"{', '.join(MIXTURE_ONLY)} (RPO: [sigmoid, sft])")

    def bad_values(self) -> list:
        return ["oops", [], ["sigmoid", "sigmoid"], ["sigmoid", "oops"], 3]


@dataclass(frozen=True)
class NumberList:
    each: Number

    def problem(self, value) -> str | None:
        if isinstance(value, list) and value and not any(self.each.problem(v) for v in value):
            return None
        return f"must be a list of numbers{self.each.range()}"

    def bad_values(self) -> list:
        return ["oops", [], [-1.0]]


@dataclass(frozen=True)
class Rounds:
    """online.rounds: a mapping of round names (checked in full by _online_rules, which knows the dpo keys)."""

    def problem(self, value) -> str | None:
        return None if isinstance(value, dict) else ("must be a mapping of round names, e.g. {round1: {from: dpo}}, "
                                                     "or {} for none")

    def bad_values(self) -> list:
        return [[], 2]


def _n(low=None, high=None, **kw) -> Number:
    return Number(low, high, **kw)


def _int(low=None, high=None, **kw) -> Number:
    return Number(low, high, integer=True, **kw)


# dpo.loss: the names losses.preference_loss dispatches on (tests/test_losses.py checks that each one does).
LOSS_NAMES = ("sigmoid", "cdpo", "robust", "hinge", "ipo", "simpo", "orpo", "kto")
MIXTURE_ONLY = ("sft",)  # a term of a dpo.loss list only (losses.sft_loss)
PRECISION = Text(("fp32", "bf16", "fp16"))
SCHEDULE = Text(("constant", "cosine"))  # loop.lr_schedule
LR, DECAY, CLIP = _n(0, 1, low_open=True), _n(0), _n(0, low_open=True)
ENGINE = {  # every training stage's: what large models need (loop.py)
    "precision": PRECISION, "gradient_accumulation_steps": _int(1),
    "gradient_checkpointing": Flag(),
}
SCHEMA = {
    "seed": _int(0),
    "launcher": Text(),
    "sharding": Text(("none", "fsdp2", "zero2", "zero3")),  # sharding.py
    "numerics": Text(("portable", "native")), "threads": _int(1),  # numerics.py
    "checkpoints": {"every_steps": _int(0), "keep": Flag()},
    "data": {
        "source": Text(),
        "format": Nullable(Text(("yaml", "yml", "jsonl", "json", "csv", "parquet"))),
        "pairs": _int(2), "heldout": CountOrFraction(), "sft_demos": _int(1), "gold_prompts": _int(0),
        "validation_prompts": _int(0), "judge_pairs": _int(0),
        "tutor_noise": Weights(_n(0, 1)), "rejected_kinds": Weights(_n(0)),
        "duplicates": Text(("drop", "error")), "truncation": Text(("truncate", "drop")),
        "label_noise": _n(0, 1),
    },
    "model": {
        "base": Text(), "trust_remote_code": Flag(), "device": Text(),
        "max_length": _int(8), "max_prompt_length": Nullable(_int(1)), "vocab_size": _int(300), "n_layer": _int(1), "n_embd": _int(8), "n_head": _int(1),
    },
    "sft": {
        "epochs": _int(0), "lr": LR, "batch_size": _int(1), "schedule": SCHEDULE, "warmup_steps": _int(0), "weight_decay": DECAY,
        "max_grad_norm": CLIP, **ENGINE, "eval_max_new_tokens": _int(1),
    },
    "reward": {
        "epochs": _int(1), "lr": LR, "batch_size": _int(1), "schedule": SCHEDULE, "warmup_steps": _int(0), "weight_decay": DECAY,
        "max_grad_norm": CLIP, **ENGINE, "center_coef": _n(0), "agreement_prompts": _int(0), "agreement_samples": _int(1),
    },
    "dpo": {
        "seed": Nullable(_int(0)), "loss": Losses(), "loss_weights": Nullable(NumberList(_n(0))), "beta": _n(0), "reference": Text(("sft", "self")),
        "lr": LR, "epochs": _int(1), "batch_size": _int(1), "schedule": SCHEDULE,
        "warmup_steps": _int(0), "weight_decay": DECAY, "max_grad_norm": CLIP, **ENGINE, "padding_free": Flag(),
        "lora": ({"r": _int(1), "alpha": _n(0, low_open=True), "dropout": _n(0, 1, high_open=True),
                  "target_modules": Names(("auto", "all-linear"))}, "nullable"),
        "label_smoothing": _n(0, 0.5, high_open=True), "simpo_gamma": _n(), "orpo_lambda": _n(0),
        "kto_desirable_weight": _n(0, low_open=True), "kto_undesirable_weight": _n(0, low_open=True),
    },
    "evaluate": {"max_new_tokens": _int(1), "batch_size": _int(1), "kl_samples": _int(1), "prompts": Nullable(_int(1)),
                 "precision": PRECISION, "judge": JudgeSpec(), "judge_template": Text(), "judge_base_url": Text()},
    "online": {
        "rounds": Rounds(),
        "prompts": Nullable(_int(1)), "samples": _int(2), "temperature": _n(0, low_open=True),
        "max_new_tokens": _int(1), "judge": Text(("reward", "gold")), "reference": Text(("sft", "previous")),
    },
}

ROUND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
RESERVED_ROUND_NAMES = ("sft", "reward", "dpo", "online")  # models/<name> and metrics/online/<name> must not collide


def _online_rules(online: dict, params: dict) -> list[str]:
    """online.rounds: a mapping of round names, in order, each trained from `from` (dpo or an earlier round), with
    any dpo key overridden for that round; each round's dpo settings then pass the dpo rules as the dpo section
    does."""
    rounds, dpo_spec = online["rounds"], SCHEMA["dpo"]
    earlier, found = ["dpo"], []
    for name, spec in rounds.items():
        where = f"params.yaml: online.rounds.{name}"
        if not isinstance(name, str) or not ROUND_NAME.match(name) or name in RESERVED_ROUND_NAMES:
            raise ConfigError(f"params.yaml: online.rounds: {name!r} is not a usable round name (letters, digits, "
                              f"_ and -, starting with a letter; not {', '.join(RESERVED_ROUND_NAMES)}); rename it")
        if not isinstance(spec, dict) or "from" not in spec:
            raise ConfigError(f"{where}: {spec!r} needs a 'from' (dpo or an earlier round), e.g. {{from: dpo}}; "
                              "add it")
        if spec["from"] not in earlier:
            raise ConfigError(f"{where}.from: {spec['from']!r} is not dpo or a round listed before it "
                              f"({', '.join(earlier)}); fix the value or reorder the rounds")
        for key, value in spec.items():
            if key == "from":
                continue
            if key not in dpo_spec:
                close = difflib.get_close_matches(str(key), list(dpo_spec), n=1)
                hint = f"did you mean {close[0]}?" if close else "a round overrides dpo keys only"
                raise ConfigError(f"{where}.{key}: unknown key; {hint} (remove or rename it)")
            validate(value, dpo_spec[key], f"online.rounds.{name}.{key}.")
        overrides = {k: v for k, v in spec.items() if k != "from"}
        found += _dpo_rules({**params["dpo"], **overrides}, params, lambda key, name=name, overrides=overrides:
                            f"online.rounds.{name}.{key}" if key in overrides else f"dpo.{key} (for round {name})")
        earlier.append(name)
    return found


def _dpo_rules(dpo: dict, params: dict, where=lambda key: f"dpo.{key}") -> list[str]:
    """dpo's keys together (also each on-policy round's, `where` naming the key that set a value)."""
    names = [dpo["loss"]] if isinstance(dpo["loss"], str) else dpo["loss"]
    if dpo["loss_weights"] is not None and len(dpo["loss_weights"]) != len(names):
        raise ConfigError(f"params.yaml: {where('loss_weights')}: {dpo['loss_weights']} has "
                          f"{len(dpo['loss_weights'])} weights for {len(names)} loss term(s) ({names}); give one "
                          "weight per term, or null")
    if "ipo" in names and dpo["beta"] == 0:
        raise ConfigError(f"params.yaml: {where('beta')}: ipo's target margin is 1/(2 beta), so beta must be > 0")
    if dpo["beta"] == 0:
        return [f"{where('beta')} is 0: the DPO loss is log 2 for every policy and its gradient is zero; training "
                "will not move (the lab's 'break it' exercise)"]
    return []


def _model_rules(model: dict, params: dict) -> list[str]:
    if model["max_prompt_length"] is not None and model["max_prompt_length"] >= model["max_length"]:
        raise ConfigError(f"params.yaml: model.max_prompt_length: {model['max_prompt_length']} leaves no room for an "
                          f"answer in model.max_length {model['max_length']}; set it below, or null (half of max_length)")
    return []


def _data_rules(data: dict, params: dict) -> list[str]:
    if data["source"] == "grammar" and not any(data["rejected_kinds"].values()):
        raise ConfigError("params.yaml: data.rejected_kinds: every weight is 0; give at least one kind a weight")
    return []


# Rules between the keys of one section (given the whole file too): each raises ConfigError for a combination that
# cannot run and returns the warnings its own stage should print.
RULES = {"data": _data_rules, "model": _model_rules, "dpo": _dpo_rules, "online": _online_rules}


def check(params: dict, stage: str | None = None) -> None:
    """The whole file against SCHEMA, then every section's RULES; the warnings of `stage`'s own section are issued
    (a warning about dpo.beta belongs in the dpo stage's log, not in prepare's)."""
    validate(params)
    for section, rules in RULES.items():
        for message in rules(params[section], params):
            if section == stage:
                warnings.warn(message)


def validate(params, spec=SCHEMA, where: str = "") -> None:
    """Raise ConfigError (one line) at the first key of `params` that does not match `spec`."""
    if isinstance(spec, tuple):  # (mapping spec, "nullable")
        if params is None:
            return
        spec = spec[0]
    if isinstance(spec, dict):
        if not isinstance(params, dict):
            raise ConfigError(f"params.yaml: {where.rstrip('.') or 'the file'}: expected a mapping of keys, got "
                              f"{params!r}; restore it from the committed params.yaml")
        for key in spec:
            if key not in params:
                raise ConfigError(f"params.yaml: {where}{key} is missing; add it (the committed params.yaml "
                                  "lists every key)")
        for key in params:
            if key not in spec:
                close = difflib.get_close_matches(str(key), list(spec), n=1)
                hint = f"did you mean {where}{close[0]}?" if close else f"known keys: {', '.join(spec)}"
                raise ConfigError(f"params.yaml: {where}{key}: unknown key; {hint} (remove or rename it)")
            validate(params[key], spec[key], f"{where}{key}.")
        return
    problem = spec.problem(params)
    if problem:
        raise ConfigError(f"params.yaml: {where.rstrip('.')}: {params!r} {problem}; fix the value")


def spec_of(section: str):
    """The spec of a params section by its dotted name ("" the whole file; an on-policy round's section,
    online.rounds.<name>, is dpo's), or None where there is no such section."""
    if section.startswith("online.rounds."):
        return SCHEMA["dpo"]
    spec = SCHEMA
    for part in section.split(".") if section else []:
        spec = spec.get(part) if isinstance(spec, dict) else None
        spec = spec[0] if isinstance(spec, tuple) else spec
    return spec if isinstance(spec, dict) else None


def leaves(spec=SCHEMA, where: str = ""):
    """(dotted key, spec) for every value-level key, for tests that try bad values everywhere."""
    if isinstance(spec, tuple):
        spec = spec[0]
    for key, sub in spec.items():
        if isinstance(sub, (dict, tuple)):
            yield from leaves(sub, f"{where}{key}.")
        else:
            yield f"{where}{key}", sub
