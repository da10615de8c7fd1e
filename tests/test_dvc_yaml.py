"""dvc.yaml declares, for each stage, exactly the code files the stage script imports (transitively): the
derivation script stages/deps.py has nothing to change."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))
import deps  # noqa: E402

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_derivation_has_nothing_to_change():
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "deps.py")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_the_imports(stage):
    spec = STAGES[stage].get("do", STAGES[stage])  # a foreach stage's template
    script = spec["cmd"].split()[1]
    declared = [d for d in spec["deps"] if d.endswith(".py")]
    assert declared == deps.code_deps(script)


def test_rewrite_replaces_code_deps_and_keeps_the_rest():
    text = ("stages:\n  prepare:\n    cmd: python stages/prepare.py\n    deps:\n      - data/raw   # a comment\n"
            "      - stages/preftune/nonexistent.py\n    outs:\n      - data/prepared/train.jsonl\n")
    new = deps.rewrite(text)
    assert "nonexistent" not in new and "      - data/raw   # a comment\n      - stages/prepare.py\n" in new
    assert "      - stages/preftune/budget.py\n" in new and new.endswith("    outs:\n      - data/prepared/train.jsonl\n")


def test_beta_and_reward_lr_reach_only_their_stages():
    reads = {name: [p for p in spec.get("do", spec).get("params", [])] for name, spec in STAGES.items()}
    # the on-policy rounds train with dpo's settings (none run by default)
    assert [s for s, ps in reads.items() if "dpo" in ps or "dpo.beta" in ps] == ["dpo", "online"]
    assert [s for s, ps in reads.items() if "reward" in ps or "reward.lr" in ps] == ["reward"]
