"""dvc.yaml declares, for each stage, exactly the code files the stage script imports (transitively)."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_library_files(script: Path) -> set[str]:
    """The preftune modules a script imports, following imports inside the library."""
    seen: set[str] = set()
    todo = [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                if node.module == "preftune" or (node.level == 1 and node.module is None):
                    names = [alias.name for alias in node.names]
                elif node.module and node.module.startswith("preftune."):
                    names = [node.module.split(".", 1)[1]]
                elif node.level == 1 and node.module:
                    names = [node.module]
            for name in names:
                path = ROOT / "stages" / "preftune" / f"{name}.py"
                rel = str(path.relative_to(ROOT))
                if path.exists() and rel not in seen:
                    seen.add(rel)
                    todo.append(path)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_the_imports(stage):
    spec = STAGES[stage]
    script = spec["cmd"].split()[1]
    declared = {d for d in spec["deps"] if d.endswith(".py")}
    assert declared == {script} | imported_library_files(ROOT / script)


def test_beta_and_reward_lr_reach_only_their_stages():
    reads = {name: [p for p in spec.get("params", [])] for name, spec in STAGES.items()}
    assert [s for s, ps in reads.items() if "dpo" in ps or "dpo.beta" in ps] == ["dpo"]
    assert [s for s, ps in reads.items() if "reward" in ps or "reward.lr" in ps] == ["reward"]
