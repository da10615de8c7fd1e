"""Print the README's on-policy rounds table from experiments/results/online.json (exported by
`bash experiments/run.sh online`): no number in it is typed by hand.

    .venv/bin/python experiments/online_table.py
"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "online.json"


def interval(values) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def signed(values) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def main() -> None:
    rows = [r for r in json.loads(RESULTS.read_text()) if r["name"].startswith("online-")]
    print("| labeler | policy | gold accuracy (500 gold prompts) | change from the policy before (paired) | "
          "validation gold (100) | judge win rate vs SFT | judge-gold agreement | KL to SFT | pairs (ties dropped) | "
          "reward hacking |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        m, labeler = row["metrics"], row["params"].get("online.judge", "reward")
        rounds = sorted({k.split(".")[1] for k in m if k.startswith("online.")})
        first = f"online.{rounds[0]}.eval."
        print(f"| {labeler} | offline DPO | {m[first + 'gold_accuracy_previous']:.3f} "
              f"{interval(m[first + 'gold_accuracy_previous_ci95'])} | | "
              f"{m[first + 'validation_gold_accuracy_previous']:.3f} | {m[first + 'previous_win_rate']:.2f} | | "
              f"{m[first + 'previous_kl_sft']:.2f} | | |")
        for name in rounds:
            e, c = f"online.{name}.eval.", f"online.{name}.round."
            agreement = m[e + "judge_gold_agreement"]
            print(f"| {labeler} | {name} | {m[e + 'gold_accuracy_round']:.3f} {interval(m[e + 'gold_accuracy_round_ci95'])} | "
                  f"{m[e + 'gold_diff_vs_previous']:+.3f} {signed(m[e + 'gold_diff_vs_previous_ci95'])} | "
                  f"{m[e + 'validation_gold_accuracy_round']:.3f} | {m[e + 'win_rate']:.2f} | "
                  f"{'' if agreement is None else f'{agreement:.2f}'} | {m[e + 'kl_sft']:.2f} | "
                  f"{m[c + 'pairs']} ({m[c + 'ties_dropped']}) | {'yes' if m[e + 'reward_hacking'] else 'no'} |")


if __name__ == "__main__":
    main()
