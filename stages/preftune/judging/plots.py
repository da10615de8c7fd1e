"""Plots of a run: PNGs for READMEs (matplotlib), and the small tables behind the win/tie/loss and frontier
charts that dvc.yaml declares for `dvc plots show` / `dvc plots diff` (the training curves come from DVCLive)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..pipeline.files import atomic_open  # noqa: E402
from ..pipeline.paths import live  # noqa: E402

NO_METADATA = {"Software": None}  # keep the bytes a function of the data alone


def read_tsv(path: str | Path) -> tuple[list[float], list[float]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    name = [k for k in rows[0] if k not in ("step", "timestamp")][0]
    return [float(r["step"]) for r in rows], [float(r[name]) for r in rows]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90, metadata=NO_METADATA)
    plt.close(fig)


def training_curves(live_dir: str, names: list[str], title: str, path: Path) -> None:
    """One panel per metric; each panel overlays the train/ and heldout/ curves (logs.live_name's layout)."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split in ("train", "heldout"):
            tsv = Path(live_dir, "plots", "metrics", split, f"{name}.tsv")
            if tsv.exists():
                steps, values = read_tsv(tsv)
                ax.plot([s + 1 for s in steps], values, marker="o", ms=3, label=split)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


OUTCOMES = ("DPO wins", "tie", "SFT wins")


def _write_outcomes(path: Path, counts: tuple[int, int, int]) -> None:
    n = sum(counts)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["outcome", "share", "count"])
        for outcome, count in zip(OUTCOMES, counts):
            writer.writerow([outcome, round(count / n, 6) if n else 0.0, count])


def write_plot_data(metrics: dict, out: Path) -> None:
    """Tables for the DVC plots of dvc.yaml: win/tie/loss shares of DPO vs SFT for each judge, and this run's
    point on the reward-vs-KL frontier (one row, so `dvc plots diff` across experiments shows one point each)."""
    _write_outcomes(out / "judge_win_tie_loss.csv", (metrics["wins"], metrics["ties"], metrics["losses"]))
    point = {k: metrics[k] for k in ("kl_dpo_sft", "reward_mean_dpo", "reward_mean_sft", "win_rate",
                                     "win_rate_ties_half", "lc_win_rate")}
    point["win_rate_informative"] = metrics.get("win_rate_informative", True)  # False: the judge may be guessing
    if "gold_n" in metrics:
        n = metrics["gold_n"]
        wins, losses = round(metrics["gold_win_rate"] * n), round(metrics["gold_loss_rate"] * n)
        _write_outcomes(out / "gold_win_tie_loss.csv", (wins, n - wins - losses, losses))
        point.update({k: metrics[k] for k in ("gold_accuracy_dpo", "gold_accuracy_sft")})
    (out / "frontier.json").write_text(json.dumps([point], indent=1) + "\n", encoding="utf-8")


def reward_distributions(rewards: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name, values in rewards.items():
        ax.hist(values, bins=15, alpha=0.55, label=f"{name.upper()} (mean {sum(values) / len(values):.2f})")
    ax.set_xlabel("reward-model score of greedy answers (held-out prompts)", fontsize=8)
    ax.legend(fontsize=8)
    _save(fig, path)


def render_all(metrics: dict, rewards: dict[str, list[float]] | None, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_plot_data(metrics, out)

    fig, ax = plt.subplots(figsize=(4, 3))
    counts = [metrics["wins"], metrics["ties"], metrics["losses"]]
    ax.bar(["DPO wins", "ties", "SFT wins"], counts, color=["tab:green", "tab:gray", "tab:red"])
    flag = "" if metrics.get("win_rate_informative", True) else "\nUNINFORMATIVE: the judge's accuracy interval includes 0.5"
    if metrics["win_rate"] is None:
        rates = "no verdict of the judge could be read"
    else:
        lo, hi = metrics["lc_win_rate_ci95"]
        rates = (f"win rate {metrics['win_rate']:.2f} (n={metrics['n']}); length-controlled, ties as half "
                 f"{metrics['lc_win_rate']:.2f} [{lo:.2f}, {hi:.2f}]")
    ax.set_title(f"{rates}\nDPO answers {metrics['length_ratio']:.2f}x SFT's length (characters){flag}", fontsize=8)
    _save(fig, out / "win_tie_loss.png")

    if rewards is None:  # a judge that gives verdicts, not rewards
        (out / "reward_distributions.png").unlink(missing_ok=True)
    else:
        reward_distributions(rewards, out / "reward_distributions.png")

    training_curves(live("dpo"), ["loss", "pair_accuracy", "kl_chosen", "kl_rejected"], "DPO per epoch",
                    out / "dpo_training.png")
    training_curves(live("sft"), ["loss"], "SFT per epoch", out / "sft_training.png")
