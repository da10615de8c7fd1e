"""judge: DPO's answers against SFT's, judged by evaluate.judge (judging/judges.py: the reward model trained here,
a reward model of the user's, a local judge LLM, or one behind an OpenAI-compatible server), and the same judge on
preference pairs whose answer is known (the held-out pairs and, on the built-in task, fresh pairs), which says how
far to trust it.

Writes data/judgments/<set>.jsonl: per comparison its verdict ("a": DPO, or a pair's chosen answer, wins; "b";
"tie"; null: the judge's answer could not be read) and what it rests on (both rewards, or both answer orders' raw
answers), and data/judgments/judge.json (the judge, its calls). Changing the judge or its template reruns this
stage and evaluate only; the answers are generate's. A judge that cannot judge (no server, no key, not a
classifier, a template without the answer slots) is one line before anything is written."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging

from preftune.judging.judges import kind_of, load_judge
from preftune.judging.prompt_sets import judge_pairs
from preftune.model import runtime
from preftune.pipeline import files
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import EVAL_SETS, JUDGMENTS, generations, judgments

log = logging.getLogger("judge")


def main() -> None:
    params = start_stage("judge", __doc__)
    model_cfg, cfg = section(params, "model"), section(params, "evaluate")
    device = runtime.resolve_device(model_cfg["device"])
    judge = load_judge(cfg, model_cfg, device)  # every check that can fail, before any work
    answered = {name: files.read_jsonl(generations(name)) for name in EVAL_SETS}
    log.info("%s judges %s, and preference pairs that test it (evaluate.prompts: %s)", cfg["judge"],
             ", ".join(f"{len(rows)} {name} prompts" for name, rows in answered.items() if rows), cfg["prompts"])
    found = {}
    for name, rows in answered.items():
        found[name] = judge.compare([r["prompt"] for r in rows], [r["answers"]["dpo"] for r in rows],
                                    [r["answers"]["sft"] for r in rows],
                                    ([r["finished"]["dpo"] for r in rows], [r["finished"]["sft"] for r in rows]),
                                    desc=f"judge {name}") if rows else []
    for name, rows in judge_pairs(cfg["prompts"], params["seed"]).items():
        found[name] = judge.pairs(rows, desc=f"judge {name}") if rows else []
    for name, records in found.items():
        files.write_jsonl(judgments(name), records)
    encode, kind = getattr(judge, "encode", None), kind_of(cfg["judge"])
    files.write_json(f"{JUDGMENTS}/judge.json", {
        "judge": cfg["judge"], "kind": kind, "calls": judge.calls,
        "template": None if kind in ("reward", "rm") else cfg["judge_template"],
        "sequences_truncated": encode.truncated if encode is not None else None})
    unread = sum(r["verdict"] is None for records in found.values() for r in records if "verdict" in r)
    log.info("%s judged %s in %d calls; %d judgments could not be read", cfg["judge"],
             ", ".join(f"{len(v)} {k}" for k, v in found.items() if v), judge.calls, unread)


if __name__ == "__main__":
    with exit_on_user_error("judge"):
        main()
