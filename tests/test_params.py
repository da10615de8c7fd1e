"""Every key of params.yaml, every kind of bad value: one line naming the key and what to do (schema.py).

The cases are derived from params.yaml and the schema, so a new key is covered without editing this file
(and a key without a spec fails the first test). The stage scripts are then run as a user would, each with a
bad value, in an empty folder: exit 2, one line, nothing written, no data or model read.
"""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc_helpers import STAGES

from preftune.pipeline.errors import ConfigError
from preftune.pipeline.schema import SCHEMA, leaves, validate

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
LEAVES = dict(leaves())
MAPPINGS = [""] + [f"{k}." for k, v in SCHEMA.items() if isinstance(v, dict)] + ["dpo.lora."]


def get(params: dict, dotted: str):
    *parents, last = dotted.split(".")
    for key in parents:
        params = params[key]
    return params, last


def one_line_error(params: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(params)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("params.yaml: ") and "; " in message, message
    return message


def test_the_committed_params_are_valid_and_every_key_has_a_spec():
    validate(PARAMS)

    def keys(node, spec, where=""):
        for key, value in node.items():
            sub = spec[key][0] if isinstance(spec[key], tuple) else spec[key]
            if isinstance(sub, dict) and isinstance(value, dict):
                yield from keys(value, sub, f"{where}{key}.")
            else:
                yield f"{where}{key}"
    assert set(keys(PARAMS, SCHEMA)) == set(LEAVES)


CASES = [(key, bad) for key, spec in LEAVES.items() for bad in spec.bad_values()]


@pytest.mark.parametrize("key, bad", CASES, ids=[f"{k}={b!r}" for k, b in CASES])
def test_a_bad_value_names_its_key(key, bad):
    params = copy.deepcopy(PARAMS)
    node, last = get(params, key)
    node[last] = bad
    assert one_line_error(params).startswith(f"params.yaml: {key}: {bad!r} ")


@pytest.mark.parametrize("key", list(LEAVES) + list(SCHEMA))
def test_a_missing_key_names_it(key):
    params = copy.deepcopy(PARAMS)
    node, last = get(params, key)
    del node[last]
    assert one_line_error(params) == (f"params.yaml: {key} is missing; add it (the committed params.yaml lists "
                                      "every key)")


def test_a_key_the_code_asks_for_is_missing_from_the_file_or_a_bug_in_the_code():
    """Section: a params key the file lacks is the user's one-line ConfigError; a key no params file can have (a typo
    in code) is a KeyError, not advice to add it to params.yaml."""
    from preftune.pipeline.params import Section
    dpo = Section("dpo", {k: v for k, v in PARAMS["dpo"].items() if k != "beta"})
    with pytest.raises(ConfigError, match=r"params\.yaml: dpo\.beta is missing; add it"):
        dpo["beta"]
    with pytest.raises(KeyError, match="dpo.betta is not a params.yaml key"):
        dpo["betta"]
    with pytest.raises(KeyError, match="online.rounds.r1.betta is not a params.yaml key"):
        Section("online.rounds.r1", {})["betta"]
    with pytest.raises(ConfigError, match="online.rounds.r1.beta is missing"):
        Section("online.rounds.r1", {})["beta"]


@pytest.mark.parametrize("where", MAPPINGS)
def test_a_misspelt_extra_key_is_refused_with_a_suggestion(where):
    params = copy.deepcopy(PARAMS)
    node = get(params, where + "x")[0]
    first = next(iter(node))
    node[first + "s"] = node[first]  # e.g. dpo.betas beside dpo.beta
    message = one_line_error(params)
    assert message.startswith(f"params.yaml: {where}{first}s: unknown key; did you mean {where}{first}?"), message


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_stops_on_a_bad_value_before_reading_anything(tmp_path, stage):
    params = copy.deepcopy(PARAMS)
    params["evaluate"]["kl_samples"] = 0  # a key most stages never read: the whole file is checked
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"{stage}: error: params.yaml: evaluate.kl_samples: 0 must be an integer "
                                        ">= 1; fix the value"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
