"""dvc.yaml declares, for each stage, exactly the code files the stage script imports (transitively): the
derivation script stages/deps.py has nothing to change."""

import json
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
    assert "      - stages/preftune/data/length_rule.py\n" in new
    assert new.endswith("    outs:\n      - data/prepared/train.jsonl\n")


def test_beta_and_reward_lr_reach_only_their_stages():
    reads = {name: [p for p in spec.get("do", spec).get("params", [])] for name, spec in STAGES.items()}
    # the on-policy rounds train with dpo's settings (none run by default)
    assert [s for s, ps in reads.items() if "dpo" in ps or "dpo.beta" in ps] == ["dpo", "online"]
    assert [s for s, ps in reads.items() if "reward" in ps or "reward.lr" in ps] == ["reward"]


# Where code lives decides what reruns: an edit to each of these modules reruns exactly these stages (then what
# consumes their outputs). tests/test_pipeline_e2e.py confirms some of them with `dvc repro --dry` after a real run.
RERUNS = {
    "data/task.py": {"prepare"},  # the generator: no stage that only checks answers
    "data/gold.py": {"sft", "reward", "evaluate", "online", "evaluate_round"},  # the checker: not prepare, nor
    # what generates or judges: answers are only checked
    "data/dataset.py": {"prepare"},
    "model/scratch.py": {"prepare", "sft"},
    "model/adapters.py": {"dpo", "online"},  # LoRA: not sft or reward, which train every weight
    "model/reward_model.py": {"reward", "judge", "online", "evaluate_round"},  # not generate or evaluate
    "train/losses.py": {"dpo", "online"},  # a loss: never the reference log-probs
    "train/pairs.py": {"reference", "dpo", "online"},
    "train/loop.py": {"sft", "reward", "dpo", "online"},  # the loop: not reference or evaluate
    "train/reward_objective.py": {"reward"},
    "judging/win_rates.py": {"evaluate", "evaluate_round"},  # statistics: never the answers or their judging
    "judging/plots.py": {"evaluate"},
    "judging/judges.py": {"judge"},  # the judge: never the answers
    "judging/evaluation.py": {"generate", "evaluate_round"},  # the policies: never the judging of their answers
}


@pytest.mark.parametrize("module", sorted(RERUNS))
def test_an_edit_to_a_module_reruns_exactly_its_stages(module):
    declared = {name for name, spec in STAGES.items() if f"stages/preftune/{module}" in spec.get("do", spec)["deps"]}
    assert declared == RERUNS[module]


# What a stage really loads: its script imported in a fresh interpreter (main() runs only as __main__), every
# module that came from stages/ listed. deps.py reads imports from the source; this is the check that it reads
# them as Python does.
LOADED = """
import importlib.util, json, sys
from pathlib import Path
script = Path(sys.argv[1]).resolve()
stages = script.parent
sys.path.insert(0, str(stages))
spec = importlib.util.spec_from_file_location("stage_under_test", script)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
files = {script} | {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
print(json.dumps(sorted(f.relative_to(stages.parent).as_posix() for f in files if f.is_relative_to(stages))))
"""
SCRIPTS = sorted({spec.get("do", spec)["cmd"].split()[1] for spec in STAGES.values()})


@pytest.mark.parametrize("script", SCRIPTS)
def test_code_deps_are_what_the_stage_really_loads(script):
    proc = subprocess.run([sys.executable, "-c", LOADED, script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)) == sorted(deps.code_deps(script))


def test_nested_modules_resolve_and_a_moved_module_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "stages" / "preftune" / "train").mkdir(parents=True)
    for name, text in {"preftune/__init__.py": "", "preftune/train/__init__.py": "",
                       "preftune/train/losses.py": "from ..errors import E\n", "preftune/errors.py": "E = 1\n",
                       "run.py": "from preftune.train import losses\n",
                       "stale.py": "from preftune.losses import sigmoid\n"}.items():
        (tmp_path / "stages" / name).write_text(text)
    monkeypatch.setattr(deps, "ROOT", tmp_path)
    monkeypatch.setattr(deps, "STAGES", tmp_path / "stages")
    assert deps.code_deps("stages/run.py") == ["stages/run.py", "stages/preftune/__init__.py",
                                               "stages/preftune/errors.py", "stages/preftune/train/__init__.py",
                                               "stages/preftune/train/losses.py"]
    with pytest.raises(deps.UnresolvedImport, match="stages/stale.py: imports preftune.losses, which is no file"):
        deps.code_deps("stages/stale.py")


def test_a_stage_that_imports_a_stage_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "stages" / "preftune").mkdir(parents=True)
    (tmp_path / "stages" / "preftune" / "__init__.py").write_text("")
    (tmp_path / "stages" / "evaluate.py").write_text("from preftune import x\n")
    (tmp_path / "stages" / "preftune" / "x.py").write_text("")
    (tmp_path / "stages" / "evaluate_round.py").write_text("from evaluate import Evaluation\n")
    monkeypatch.setattr(deps, "ROOT", tmp_path)
    monkeypatch.setattr(deps, "STAGES", tmp_path / "stages")
    with pytest.raises(deps.UnresolvedImport, match="imports the stage script evaluate.py"):
        deps.code_deps("stages/evaluate_round.py")


def test_numerics_and_threads_rerun_exactly_the_stages_that_compute_with_torch():
    from preftune.pipeline.numerics import COMPUTING_STAGES

    reads = {name: spec.get("do", spec).get("params", []) for name, spec in STAGES.items()}
    assert sorted(s for s, ps in reads.items() if "numerics" in ps) == sorted(COMPUTING_STAGES)
    assert sorted(s for s, ps in reads.items() if "threads" in ps) == sorted(COMPUTING_STAGES)
