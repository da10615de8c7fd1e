"""Every path the stages hand to each other, defined once (dvc.yaml declares the same ones)."""

RAW = "data/raw"  # user datasets: prepare depends on the whole folder
PREPARED = "data/prepared"
TOKENIZER = f"{PREPARED}/tokenizer"
CHECKS = f"{PREPARED}/checks"  # the built-in task's extra sets (gold, validation, judge); only a README for user data
SFT, REWARD, DPO = "models/sft", "models/reward", "models/dpo"
DPO_ADAPTER = f"{DPO}/adapter"
REFERENCE = "data/reference/logps.safetensors"
REFERENCE_ENCODING = "data/reference/encoding.json"
GENERATIONS = "data/generations"  # the policies' answers to each evaluation set (generate)
JUDGMENTS = "data/judgments"  # the judge's verdicts on them and on preference pairs (judge)
POLICY_MEASURES = f"{GENERATIONS}/policies.json"  # what needs the policies themselves: KL, implicit reward
EVAL_SETS = ("heldout", "validation", "gold")  # the prompt sets evaluate reports on (validation, gold: built-in only)
CHECKPOINTS = "checkpoints"  # checkpoints/<stage>/<inputs key>/: git- and dvc-ignored, not a stage output

METRICS = "metrics"
PREPARE_METRICS = f"{METRICS}/prepare.json"
EVAL_METRICS = f"{METRICS}/eval.json"
HEADLINE = f"{METRICS}/headline.json"  # evaluate's few deciding numbers: `dvc metrics show metrics/headline.json`
RUN_MANIFEST = f"{METRICS}/manifest.json"  # the lab's run manifest: what was trained and how it did
SAMPLES = f"{METRICS}/samples.csv"
PER_PROMPT = f"{METRICS}/per_prompt.json"  # evaluate's verdicts per prompt, for comparisons over prompts and seeds
PLOTS = f"{METRICS}/plots"


def policy_dir(name: str) -> str:
    """models/<name>: the offline DPO model (dpo) or an on-policy round's model (online.rounds.<name>)."""
    return f"models/{name}"


def round_data(name: str) -> str:
    """data/online/<name>: a round's samples, labels, pairs and their reference log-probs."""
    return f"data/online/{name}"


def round_metrics(name: str) -> str:
    """metrics/online/<name>: a round's counts (round.json), training log and evaluation (eval.json)."""
    return f"{METRICS}/online/{name}"


def prepared(name: str) -> str:
    """data/prepared/<name>.jsonl for name in train, heldout, sft."""
    return f"{PREPARED}/{name}.jsonl"


def check_set(name: str) -> str:
    """data/prepared/checks/<name>.jsonl for name in gold, validation, judge: the built-in task's only."""
    return f"{CHECKS}/{name}.jsonl"


def live(name: str) -> str:
    """metrics/<name>: a training stage's DVCLive folder (sft, reward, dpo; dpo_steps for dpo's per-step log)."""
    return f"{METRICS}/{name}"


def generations(name: str) -> str:
    """data/generations/<name>.jsonl: per prompt of evaluation set `name`, each policy's answer."""
    return f"{GENERATIONS}/{name}.jsonl"


def judgments(name: str) -> str:
    """data/judgments/<name>.jsonl: the judge's record per comparison of set `name` (an evaluation set, or
    pairs_heldout / pairs_fresh: preference pairs that test the judge)."""
    return f"{JUDGMENTS}/{name}.jsonl"
