"""Export one experiment set from DVC into committed, readable JSON (called by experiments/run.sh).

    python experiments/export.py SET PREFIX BASELINE_REV NAME...

Writes
  experiments/results/SET.json         from `dvc exp show --json --rev BASELINE_REV`: a list of rows
                                       {name, rev, baseline, status, params, metrics}, the baseline row first,
                                       then this set's experiments (names starting with PREFIX) in NAME order.
  experiments/results/SET.curves.json  from `dvc plots diff <exp names> BASELINE_REV --json --split`: for each row,
                                       the per-epoch train/heldout curves and the per-step loss and grad_norm.

params: the params.yaml keys (flattened, dotted) that differ from the baseline, plus dpo.beta, dpo.loss,
dpo.reference, data.label_noise, dpo.seed, dpo.epochs, dpo.lr and dpo.max_grad_norm always. metrics: metrics/eval.json as eval.*, metrics/dpo/metrics.json
as dpo.*, metrics/reward/metrics.json as reward.*, prepare.label_swapped (pairs whose labels the noise swapped) and prepare.pairs.train.
`dvc exp show` leaves out list-valued metrics, so the two intervals eval.win_rate_ci95 and
eval.gold_accuracy_diff_ci95 are read from the same experiment commit's metrics/eval.json (a git-tracked output):
`git show <rev>:metrics/eval.json`, after checking that its scalar values equal what `dvc exp show` reported.
Experiment refs do not travel with a git clone; these files do, and experiments/report.py reads only them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ALWAYS = ("dpo.beta", "dpo.loss", "dpo.reference", "data.label_noise", "dpo.seed", "dpo.epochs", "dpo.lr", "dpo.max_grad_norm")
METRIC_FILES = {"metrics/eval.json": "eval", "metrics/dpo/metrics.json": "dpo", "metrics/reward/metrics.json": "reward"}
EPOCH_DIR, STEP_DIR = "metrics/dpo/plots/metrics", "metrics/dpo_steps/plots/metrics"
STEP_METRICS = ("loss", "grad_norm", "pair_accuracy", "kl_chosen", "kl_rejected")
OUT = Path("experiments/results")
ROUND_FILE = re.compile(r"metrics/online/([A-Za-z][\w-]*)/(round|eval)\.json")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dvc_json(*args: str):
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"export: dvc {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def row_of(name: str, rev_entry: dict, baseline_params: dict | None, baseline_rev: str) -> dict:
    data = rev_entry.get("data") or {}
    params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
    if baseline_params is None:
        chosen = {k: params.get(k) for k in sorted(ALWAYS)}
    else:
        changed = {k for k in set(params) | set(baseline_params) if params.get(k) != baseline_params.get(k)}
        chosen = {k: params.get(k) for k in sorted(changed | set(ALWAYS))}
    metrics = {}
    files = data.get("metrics") or {}
    for path, prefix in METRIC_FILES.items():
        metrics.update(flatten((files.get(path) or {}).get("data") or {}, prefix + "."))
    for path, entry in files.items():  # on-policy rounds: metrics/online/<round>/{round,eval}.json
        found = ROUND_FILE.fullmatch(path)
        if found:
            metrics.update(flatten((entry or {}).get("data") or {}, f"online.{found[1]}.{found[2]}."))
    prepare = (files.get("metrics/prepare.json") or {}).get("data") or {}
    if prepare.get("label_swapped") is not None:
        metrics["prepare.label_swapped"] = prepare["label_swapped"]
    if (prepare.get("pairs") or {}).get("train") is not None:
        metrics["prepare.pairs.train"] = prepare["pairs"]["train"]
    metrics = {k: v for k, v in metrics.items() if not k.endswith(".step")}  # DVCLive's last step index
    metrics.update(list_metrics(rev_entry.get("rev"), metrics))
    error = rev_entry.get("error")
    return {"name": name, "rev": rev_entry.get("rev"), "baseline": baseline_rev,
            "status": "failed" if error or not metrics else "success",
            **({"error": error} if error else {}), "params": chosen, "metrics": dict(sorted(metrics.items()))}


def list_metrics(rev: str | None, metrics: dict) -> dict:
    """The list-valued entries of metrics/eval.json (as eval.*) and of each round's eval.json (as
    online.<round>.eval.*) at `rev`: dvc exp show drops them."""
    if not rev or not metrics:
        return {}
    files = {"metrics/eval.json": "eval."}
    files.update({f"metrics/online/{r}/eval.json": f"online.{r}.eval."
                  for r in sorted({k.split(".")[1] for k in metrics if k.startswith("online.")})})
    out = {}
    for path, prefix in files.items():
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        if proc.returncode != 0:
            continue
        saved = flatten(json.loads(proc.stdout), prefix)
        for k, v in saved.items():
            if not isinstance(v, list) and k in metrics and metrics[k] != v:
                sys.exit(f"export: {rev[:7]}:{path} has {k}={v} but dvc exp show reported {metrics[k]}")
        out.update({k: v for k, v in saved.items() if isinstance(v, list)})
    return out


def number(v):
    try:
        return round(float(v), 6)
    except (TypeError, ValueError):
        return None


def curves(revs: dict[str, str]) -> dict:
    """revs: row name -> revision for `dvc plots diff`. Returns name -> {epochs: {split: {metric: [...]}}, steps}."""
    targets = [EPOCH_DIR] + [f"{STEP_DIR}/{m}.tsv" for m in STEP_METRICS]
    out = dvc_json("plots", "diff", *revs.values(), "--json", "--split", "--targets", *targets)
    by_rev = {rev: name for name, rev in revs.items()}
    result = {name: {"epochs": {"train": {}, "heldout": {}}, "steps": {}} for name in revs}
    for key, plots in out.get("data", {}).items():
        if key.startswith("dvc.yaml::"):
            continue  # the same files again, through dvc.yaml's plot definitions
        m = re.fullmatch(rf"{EPOCH_DIR}/(train|heldout)/(\w+)\.tsv", key)
        s = re.fullmatch(rf"{STEP_DIR}/(\w+)\.tsv", key)
        if not (m or s):
            continue
        metric = (m or s).group(2 if m else 1)
        for plot in plots:
            series: dict[str, list] = {}
            for point in plot.get("anchor_definitions", {}).get("<DVC_METRIC_DATA>", []):
                series.setdefault(point["rev"], []).append((int(point["step"]), number(point[metric])))
            for rev, points in series.items():
                if rev not in by_rev:
                    continue
                values = [v for _, v in sorted(points)]
                if m:
                    result[by_rev[rev]]["epochs"][m.group(1)][metric] = values
                else:
                    result[by_rev[rev]]["steps"][metric] = values
    for name in result:
        for split in ("train", "heldout"):
            result[name]["epochs"][split] = dict(sorted(result[name]["epochs"][split].items()))
        result[name]["steps"] = dict(sorted(result[name]["steps"].items()))
    if out.get("errors"):
        result["_dvc_errors"] = out["errors"]
    return result


def dump(obj, path: Path) -> None:
    """Indented JSON with every list of scalars on one line: stable and diffable."""
    text = json.dumps(obj, indent=1)
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)
    path.write_text(text + "\n")


def main() -> None:
    set_name, prefix, baseline_rev, *names = sys.argv[1:]
    shown = dvc_json("exp", "show", "--json", "--rev", baseline_rev, "--hide-workspace", "--hide-queued")
    base = next((b for b in shown if b["rev"] == baseline_rev), None)
    if base is None:
        sys.exit(f"export: baseline {baseline_rev} not in `dvc exp show --json --rev {baseline_rev}`")
    baseline = row_of("baseline", base, None, baseline_rev)
    baseline["name"] = "baseline"
    baseline_params = flatten(base["data"]["params"]["params.yaml"]["data"])
    found = {}
    for exp in base.get("experiments") or []:
        name = exp.get("name") or ""
        if not name.startswith(prefix):
            continue
        for rev_entry in exp.get("revs") or []:
            found[name] = row_of(name, rev_entry, baseline_params, baseline_rev)
            found[name]["status"] = "failed" if (exp.get("executor") or {}).get("state") == "failed" else found[name]["status"]
    rows = [baseline] + [found[n] for n in names if n in found]
    missing = [n for n in names if n not in found]
    for n in missing:
        rows.append({"name": n, "rev": None, "baseline": baseline_rev, "status": "missing", "params": {}, "metrics": {}})
    OUT.mkdir(parents=True, exist_ok=True)
    dump(rows, OUT / f"{set_name}.json")
    ok = {r["name"]: (r["rev"] if r["name"] == "baseline" else r["name"]) for r in rows if r["status"] == "success"}
    dump(curves(ok), OUT / f"{set_name}.curves.json")
    per_prompt = {}  # each experiment's metrics/per_prompt.json (git-tracked in its commit), for compare.py
    for r in rows:
        proc = subprocess.run(["git", "show", f"{r['rev']}:metrics/per_prompt.json"], capture_output=True, text=True) \
            if r["status"] == "success" and r["name"] != "baseline" else None
        if proc is not None and proc.returncode == 0:
            per_prompt[r["name"]] = json.loads(proc.stdout)
    if per_prompt:
        dump(per_prompt, OUT / f"{set_name}.per_prompt.json")
    print(f"export: {OUT}/{set_name}.json ({len(rows) - 1} experiments, {sum(r['status'] != 'success' for r in rows)} not successful)"
          f" and {OUT}/{set_name}.curves.json")


if __name__ == "__main__":
    main()
