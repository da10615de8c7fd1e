"""The code dependencies of every stage in dvc.yaml, derived from the imports.

DVC reruns a stage when one of its declared deps changes, so each stage must list exactly the code it runs: its
script and every module of stages/preftune/ that the script imports, directly or through another module, with the
__init__.py of each package on the way, resolved as Python resolves them (nested packages, relative imports). An
import that resolves to no file, or to another stage's script, stops the check: a stage imports the library only.
Where a helper lives therefore decides which stages rerun when it changes: put code in the module of the concept
it belongs to, and a module that only some stages import costs the others nothing.

    python stages/deps.py           # exit 1 and list the differences if dvc.yaml's code deps are out of date
    python stages/deps.py --write   # rewrite them (data deps, comments and order stay as they are)

Only the `- stages/...py` lines of each stage's `deps:` are rewritten, in place of the old ones, sorted with the
script first; tests/test_dvc_yaml.py runs the check, and checks it against the modules each stage really loads.
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


class UnresolvedImport(Exception):
    pass


def module_file(name: str) -> Path | None:
    """The file that `import name` runs for a dotted name under stages/ (a module or a package's __init__.py)."""
    base = STAGES.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def first_party(name: str) -> bool:
    """A name whose top level is this repository's: the preftune package or a script in stages/."""
    top = name.split(".")[0]
    return (STAGES / top / "__init__.py").is_file() or (STAGES / f"{top}.py").is_file()


def imported_names(path: Path) -> list[tuple[str, bool]]:
    """The dotted names `path` imports, absolute, each with whether it must be a module (the module of an
    `import` or a `from ... import`) or may be a name inside one (what a `from` imports)."""
    parts = list(path.relative_to(STAGES).with_suffix("").parts)
    package = parts[:-1]  # a module's package; a package's __init__ is in its own package
    if parts[-1] == "__init__":
        parts = package
    names: list[tuple[str, bool]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [(alias.name, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    raise UnresolvedImport(f"{path.relative_to(ROOT)}: relative import beyond stages/")
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.append((module, True))
            names += [(f"{module}.{alias.name}", False) for alias in node.names]
    return names


def imported_modules(script: Path) -> set[str]:
    """Repository-relative paths of every file under stages/ that running `script` imports, transitively: modules
    and the __init__.py of each package on the way. An import of a name under stages/ that resolves to no file, or
    to another stage's script, is an UnresolvedImport, not a silently shorter (or longer) list."""
    seen: set[str] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for name, must_be_module in imported_names(path):
            if not first_party(name):
                continue
            parts = name.split(".")
            files = [module_file(".".join(parts[:i])) for i in range(1, len(parts))]  # the packages on the way
            target = module_file(name)
            if target is None and must_be_module:
                raise UnresolvedImport(f"{path.relative_to(ROOT)}: imports {name}, which is no file under stages/")
            if target is not None and target.parent == STAGES:
                raise UnresolvedImport(f"{path.relative_to(ROOT)}: imports the stage script {target.name}; a stage "
                                       "imports the library only (move what both need into stages/preftune/)")
            for file in [f for f in files if f is not None] + ([target] if target else []):
                rel = file.relative_to(ROOT).as_posix()
                if rel not in seen and file != script:
                    seen.add(rel)
                    todo.append(file)
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
    try:
        new = rewrite(old)
    except UnresolvedImport as err:
        print(f"deps: {err}; fix the import or the module's place", file=sys.stderr)
        return 1
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
