"""online: one on-policy round of iterative DPO, `python stages/online.py <round>` (dvc.yaml runs one stage per
entry of params.yaml online.rounds).

1. Sample online.samples answers per training prompt from the policy the round starts from (models/dpo or an earlier
   round's model), at online.temperature, seeded by the run's seed and the round's name.
2. Score them: the reward model (online.judge: reward), or on the built-in task the gold checker (gold: 1 right,
   0 wrong).
3. Pair each prompt's best answer against its worst; prompts whose answers all score the same are dropped and
   counted.
4. The pairs' and the held-out pairs' reference log-probs, once: under the SFT model (online.reference: sft) or the
   starting policy (previous).
5. DPO from the starting policy on those pairs, with params.yaml's dpo settings and the round's own overrides.

Outputs: data/online/<round>/ (samples.jsonl, pairs.jsonl, logps.safetensors), models/<round> (as models/dpo) and
metrics/online/<round>/ (round.json: the counts; training/: the epoch log). Sampling, scoring and the reference run
on the main process; training runs on every rank of the launch and resumes from checkpoints like dpo."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import hashlib
import logging
import random
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from preftune.data import formats, length_rule
from preftune.data.encoding import EVAL_BATCH, Encoder
from preftune.data.gold import is_correct
from preftune.model import loading, runtime
from preftune.model.generation import generate_answers
from preftune.model.reward_model import load_reward_model, score_texts
from preftune.pipeline import files
from preftune.pipeline.errors import ConfigError, DataError, exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import REWARD, SFT, policy_dir, prepared, round_data, round_metrics
from preftune.train.loop import Run
from preftune.train.losses import PreferenceLoss
from preftune.train.pairs import reference_tensors
from preftune.train.policy import train_and_save
from preftune.train.preference_objective import preference_objective
from preftune.train.rounds import form_pairs, round_seed, round_spec

log = logging.getLogger("online")


def training_prompts(train: list[dict], limit: int | None, seed: int) -> list[dict]:
    """One record per distinct training prompt (its first row), in file order; with `limit`, `limit` of them drawn
    with `seed`."""
    records = list({r["prompt"]: r for r in reversed(train)}.values())[::-1]
    if limit is not None and limit < len(records):
        records = random.Random(seed).sample(records, limit)
    return records


def sampling_prompts(train: list[dict], online: dict, encode, seed: int) -> tuple[list[dict], int]:
    """training_prompts, each prompt cut to what online.max_new_tokens leave of max_length by prepare's rule
    (length_rule.fit_prompts: a conversation keeps its system message and headers), and how many were cut. The pairs
    then train on the prompt that was sampled from."""
    records = training_prompts(train, online["prompts"], seed)
    budget = length_rule.generation_budget(encode.max_length, online["max_new_tokens"])
    fitted, cut = length_rule.fit_prompts(records, encode, budget, formats.renderer(encode.tokenizer))
    return [{**r, "prompt": p} for r, p in zip(records, fitted)], cut


def sample_and_score(process, online: dict, cfg: dict, start: str, records: list[dict], tokenizer, encode,
                     max_length: int, seed: int):
    """online.samples answers per record's prompt (fitted: length_rule.fit_prompts) from models/<start>, their scores
    and whether each ended (the reward model scores an answer that ran out of tokens without EOS, as it trained)."""
    k = online["samples"]
    prompts = [r["prompt"] for r in records for _ in range(k)]
    policy = loading.load_causal_lm(policy_dir(start)).to(process.device)
    stats: dict = {}
    with runtime.autocast(process.device, cfg["precision"]):
        answers = generate_answers(policy, tokenizer, prompts, max_new_tokens=online["max_new_tokens"],
                                   batch_size=EVAL_BATCH, sample=True, seed=seed, desc=f"sample from {start}",
                                   max_length=max_length, stats=stats, temperature=online["temperature"])
    del policy
    if online["judge"] == "gold":
        scores = [float(is_correct(r, a)) for r, a in zip((r for r in records for _ in range(k)), answers)]
    else:
        judge = load_reward_model(REWARD).to(process.device)
        with runtime.autocast(process.device, cfg["precision"]):
            scores = score_texts(judge, encode, prompts, answers, process.device, desc="score samples",
                                 finished=stats["finished"])
    groups = lambda values: [values[i * k:(i + 1) * k] for i in range(len(records))]  # noqa: E731
    return groups(answers), groups(scores), groups(stats["finished"])


def main() -> None:
    params = start_stage("online", __doc__, item="round")
    name = params.item
    start, cfg = round_spec(params, name)
    online, model_cfg = section(params, "online"), section(params, "model")
    seed = params["seed"] if cfg.get("seed") is None else cfg["seed"]
    run = Run.of_stage(f"online@{name}", cfg, params)
    process = run.process
    runtime.seed_everything(seed)
    train, heldout = files.read_jsonl(prepared("train")), files.read_jsonl(prepared("heldout"))
    if online["judge"] == "gold" and not all("correct" in r for r in train):
        raise ConfigError("params.yaml: online.judge: gold needs the built-in task's gold checker (data.source: "
                          "grammar), and these training rows have none; use online.judge: reward")
    tokenizer = loading.load_tokenizer(SFT)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    out, metrics = Path(round_data(name)), Path(round_metrics(name))
    pairs_path, reference_path = out / "pairs.jsonl", str(out / "logps.safetensors")

    started = time.perf_counter()
    if process.is_main:
        draw = round_seed(seed, name)  # each round its own prompts (with online.prompts) and samples
        records, prompts_cut = sampling_prompts(train, online, encode, draw)
        answers, scores, finished = sample_and_score(process, online, cfg, start, records, tokenizer, encode,
                                                     model_cfg["max_length"], draw)
        rows, counts = form_pairs(records, answers, scores, finished)
        if not rows:
            raise DataError(f"online.rounds.{name}: every prompt's {online['samples']} samples from {start} scored "
                            f"the same ({counts['ties_dropped']} ties), so there is nothing to prefer; raise "
                            "online.samples or online.temperature, or use another online.judge")
        out.mkdir(parents=True, exist_ok=True)
        files.write_jsonl(out / "samples.jsonl", [
            {"prompt": r["prompt"], "answer": a, "score": s, "finished": f}
            for r, group, group_scores, group_finished in zip(records, answers, scores, finished)
            for a, s, f in zip(group, group_scores, group_finished)])
        files.write_jsonl(pairs_path, rows)
        reference = loading.load_causal_lm(SFT if online["reference"] == "sft" else policy_dir(start))
        save_file(reference_tensors(reference.to(process.device).eval(), {"train": rows, "heldout": heldout}, encode,
                                    process.device, cfg["precision"], desc="reference log-probs"), reference_path)
        del reference
        log.info("round %s: sampled, scored and the reference log-probs in %.0f s", name, time.perf_counter() - started)
        weights = Path(policy_dir(start)) / "model.safetensors"
        counts = {"from": start, "judge": online["judge"], "reference": online["reference"],
                  "sampled_from_sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else None,
                  **counts, "samples": sum(map(len, answers)), "answers_cut": sum(not f for g in finished for f in g),
                  "prompts_truncated": prompts_cut}
        log.info("round %s: %d prompts x %d samples from %s, judged by %s: %d pairs, %d ties dropped (chosen %.3f, "
                 "rejected %.3f on average); %d answers ran out of tokens", name, counts["prompts"],
                 online["samples"], start, online["judge"], counts["pairs"], counts["ties_dropped"],
                 counts["score_chosen_mean"], counts["score_rejected_mean"], counts["answers_cut"])
    process.accelerator.wait_for_everyone()

    trained_from = time.perf_counter()
    rows = files.read_jsonl(pairs_path)
    objective = preference_objective(process, encode, rows, heldout, cfg, PreferenceLoss.from_params(cfg),
                                     load_file(reference_path), reference_path)
    train_and_save(run, cfg, seed, objective, tokenizer, encode, start=policy_dir(start), out=policy_dir(name),
                   lives=(str(metrics / "training"),), card=(params, f"online.rounds.{name}", str(pairs_path)))
    log.info("round %s: trained in %.0f s (%.0f s in all)", name, time.perf_counter() - trained_from,
             time.perf_counter() - started)
    if process.is_main:
        files.write_json(metrics / "round.json", {k: round(v, 6) if isinstance(v, float) else v
                                                 for k, v in counts.items()})
    run.end()


if __name__ == "__main__":
    with exit_on_user_error("online"):
        main()
