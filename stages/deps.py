"""The code dependencies of every stage in dvc.yaml, derived from the imports.

DVC reruns a stage when one of its declared deps changes, so each stage must list exactly the code it runs: its
script and every module of stages/preftune/ that the script imports, directly or through another module (or through
another stage's script it imports, which it then lists too). Where a
helper lives therefore decides which stages rerun when it changes: put code in the module of the concept it
belongs to, and a module that only some stages import costs the others nothing.

    python stages/deps.py           # exit 1 and list the differences if dvc.yaml's code deps are out of date
    python stages/deps.py --write   # rewrite them (data deps, comments and order stay as they are)

Only the `- stages/...py` lines of each stage's `deps:` are rewritten, in place of the old ones, sorted with the
script first; tests/test_dvc_yaml.py runs the check.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "stages"
LIBRARY = STAGES / "preftune"
CODE_DEP = re.compile(r"^(\s*)- (stages/\S+\.py)\s*$")


def imported_modules(script: Path) -> set[str]:
    """Repository-relative paths of the preftune modules `script` imports, transitively."""
    seen: set[str] = set()
    todo = [script]
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.module == "preftune" or (node.level == 1 and node.module is None):
                    names = [alias.name for alias in node.names]
                elif node.module and node.module.startswith("preftune."):
                    names = [node.module.split(".", 1)[1]]
                elif node.level == 1 and node.module:
                    names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("preftune.")]
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and (STAGES / f"{node.module}.py").exists():  # another stage's script (from evaluate import ...)
                rel = (STAGES / f"{node.module}.py").relative_to(ROOT).as_posix()
                if rel not in seen:
                    seen.add(rel)
                    todo.append(STAGES / f"{node.module}.py")
            for name in names:
                path = LIBRARY / f"{name.split('.')[0]}.py"
                rel = path.relative_to(ROOT).as_posix()
                if path.exists() and rel not in seen:
                    seen.add(rel)
                    todo.append(path)
    return seen


def code_deps(script: str) -> list[str]:
    """The code a stage whose command runs `script` depends on: the script, then its modules, sorted."""
    return [script] + sorted(imported_modules(ROOT / script))


def rewrite(text: str) -> str:
    """dvc.yaml with each stage's code deps replaced by code_deps of its script (the `stages/*.py` in its cmd)."""
    lines, out = text.splitlines(keepends=True), []
    stage_script, in_deps, written = None, False, False
    for line in lines:
        cmd = re.match(r"^\s+cmd:.*?\s(stages/\S+\.py)", line)
        if cmd:
            stage_script = cmd.group(1)
        if re.match(r"^\s+deps:\s*$", line):
            in_deps, written = True, False
            out.append(line)
            continue
        if in_deps and not re.match(r"^\s+(-|#)", line):
            in_deps = False
        dep = CODE_DEP.match(line) if in_deps else None
        if dep:
            if not written and stage_script:
                out += [f"{dep.group(1)}- {path}\n" for path in code_deps(stage_script)]
                written = True
            continue
        out.append(line)
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml instead of checking it")
    args = parser.parse_args()
    path = ROOT / "dvc.yaml"
    old = path.read_text(encoding="utf-8")
    new = rewrite(old)
    if args.write:
        path.write_text(new, encoding="utf-8")
        return 0
    if new != old:
        import difflib

        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "dvc.yaml",
                                                   "dvc.yaml (derived)"))
        print("dvc.yaml: code deps differ from the imports; run `python stages/deps.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
