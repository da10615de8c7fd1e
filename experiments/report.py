"""Write docs/experiments.md and docs/experiments/*.png from experiments/results/*.json only.

    .venv/bin/python experiments/report.py

The inputs are the tables experiments/run.sh exported from `dvc exp show --json` and `dvc plots diff --json`;
no number on the page is typed by hand. The paragraphs are templates whose wording is chosen from the data
(e.g. "stayed at" vs "moved from"), so they stay true when the numbers change.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
DOCS = ROOT / "docs"
FIGS = DOCS / "experiments"
SETS = ("break_it", "beta_sweep", "losses", "seeds")
SET_TITLES = {"break_it": "Break it", "beta_sweep": "Beta sweep", "losses": "Loss variants", "seeds": "Seed spread"}
LOG2 = math.log(2)
# Run-wide sizes and settings, filled in main() from the baseline row (never typed here).
B: dict = {}
CURVES = (("loss", "loss"), ("pair_accuracy", "pair accuracy"), ("kl_chosen", "kl_chosen (nats)"),
          ("kl_rejected", "kl_rejected (nats)"))


# --- loading -------------------------------------------------------------------------------------------------

def load() -> tuple[dict, dict]:
    tables, curves = {}, {}
    for s in SETS:
        path = RESULTS / f"{s}.json"
        if path.exists():
            tables[s] = json.loads(path.read_text())
            cpath = RESULTS / f"{s}.curves.json"
            curves[s] = json.loads(cpath.read_text()) if cpath.exists() else {}
    if not tables:
        raise SystemExit("report: no experiments/results/*.json; run `bash experiments/run.sh all` first")
    return tables, curves


def rows(tables: dict, s: str, with_baseline: bool = False) -> list[dict]:
    return [r for r in tables.get(s, []) if (with_baseline or r["name"] != "baseline") and r["status"] == "success"]


def row(tables: dict, s: str, name: str) -> dict | None:
    return next((r for r in tables.get(s, []) if r["name"] == name and r["status"] == "success"), None)


def m(r: dict | None, key: str):
    return None if r is None else r["metrics"].get(key)


def reward_heldout_accuracy(r: dict | None):
    """reward.heldout.accuracy: DVCLive's train/ and heldout/ folders in every stage; results exported before that
    layout name it reward.heldout_accuracy."""
    found = m(r, "reward.heldout.accuracy")
    return m(r, "reward.heldout_accuracy") if found is None else found


# --- formatting ----------------------------------------------------------------------------------------------

def f3(x, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def f2(x, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def ci(pair) -> str:
    return "-" if not pair else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def fmt_val(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def params_label(r: dict, baseline: dict) -> str:
    changed = [f"{k}={fmt_val(v)}" for k, v in r["params"].items() if baseline["params"].get(k, object()) != v
               or k not in baseline["params"]]
    return ", ".join(changed) if changed else "(baseline params)"


def pct(x) -> str:
    return f"{100 * x:.0f}%"


# --- tables --------------------------------------------------------------------------------------------------

HEADER = ("| experiment | params | train loss | train pair acc | held-out pair acc | kl_chosen | kl_rejected "
          "| win rate [95% CI] | win rate, ties half | gold SFT -> DPO | diff [95% CI] | kl_dpo_sft |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table(rs: list[dict], baseline: dict) -> str:
    lines = [HEADER]
    for r in rs:
        name = "baseline (committed run)" if r["name"] == "baseline" else f"`{r['name']}`"
        lines.append(
            f"| {name} | {params_label(r, baseline) if r['name'] != 'baseline' else '(params.yaml)'} "
            f"| {f3(m(r, 'dpo.train.loss'))} | {f3(m(r, 'dpo.train.pair_accuracy'))} "
            f"| {f3(m(r, 'dpo.heldout.pair_accuracy'))} "
            f"| {f3(m(r, 'dpo.train.kl_chosen'), True)} | {f3(m(r, 'dpo.train.kl_rejected'), True)} "
            f"| {f2(m(r, 'eval.win_rate'))} {ci(m(r, 'eval.win_rate_ci95'))} | {f2(m(r, 'eval.win_rate_ties_half'))} "
            f"| {f3(m(r, 'eval.gold_accuracy_sft'))} -> {f3(m(r, 'eval.gold_accuracy_dpo'))} "
            f"| {f3(m(r, 'eval.gold_accuracy_diff'), True)} {ci(m(r, 'eval.gold_accuracy_diff_ci95'))} "
            f"| {f3(m(r, 'eval.kl_dpo_sft'))} |")
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------------------------------

def save(fig, name: str) -> str:
    FIGS.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGS / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return f"experiments/{name}"


def colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def same_as(names: list[str], curves: dict, part: str) -> dict[str, str]:
    """name -> an earlier name whose `part` curves ('epochs' or 'steps') are identical (they would hide each other)."""
    out, seen = {}, {}
    for name in names:
        sig = json.dumps(curves.get(name, {}).get(part), sort_keys=True)
        if sig in seen:
            out[name] = seen[sig]
        else:
            seen[sig] = name
    return out


MARKERS = "osD^vPX*<>ph"


def group_colors(groups: list[str]) -> list:
    """One colour family per group (e.g. per loss in the seed set), shades within it."""
    fams = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
    order = list(dict.fromkeys(groups))
    out = []
    for g in groups:
        members = [i for i, x in enumerate(groups) if x == g]
        k = members.index(len(out)) if len(out) in members else 0
        out.append(plt.get_cmap(fams[order.index(g) % len(fams)])(0.45 + 0.5 * k / max(len(members) - 1, 1)))
    return out


def plot_curves(s: str, names: list[str], curves: dict, palette: list | None = None) -> str:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    dup = same_as(names, curves, "epochs")
    for (metric, label), ax in zip(CURVES, axes.flat):
        for i, (name, c) in enumerate(zip(names, palette or colors(len(names)))):
            ep = curves.get(name, {}).get("epochs", {})
            for split, style in (("train", "-"), ("heldout", "--")):
                ys = ep.get(split, {}).get(metric)
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, style, color=c, marker=MARKERS[i % len(MARKERS)], ms=4,
                            label=(name + (f" (same curves as {dup[name]})" if name in dup else ""))
                            if split == "train" else None)
        if metric == "loss":
            ax.axhline(LOG2, color="grey", lw=0.8, ls=":")
            ax.text(1, LOG2, " log 2", va="bottom", fontsize=8, color="grey")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
               title="solid: train, dashed: held-out")
    fig.suptitle(f"{SET_TITLES[s]}: DPO diagnostics per epoch")
    fig.tight_layout()
    return save(fig, f"{s}_curves.png")


def plot_steps(names: list[str], curves: dict) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    n = len(names)
    for i, (name, c) in enumerate(zip(names, colors(n))):
        st = curves.get(name, {}).get("steps", {})
        lw = 1 + 2.0 * (n - 1 - i) / max(n - 1, 1)  # earlier series thicker, so identical ones stay visible
        if st.get("loss"):
            axes[0].plot(st["loss"], color=c, lw=lw, label=name)
        if st.get("grad_norm"):
            axes[1].plot(st["grad_norm"], color=c, lw=lw, label=name)
    axes[0].axhline(LOG2, color="grey", lw=0.8, ls=":")
    axes[0].set_title("loss per optimizer step")
    axes[1].set_title(f"gradient norm per step (before clipping at {B['clip']})")
    axes[1].set_yscale("symlog", linthresh=0.01)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save(fig, "break_it_steps.png")


def plot_outcomes(s: str, rs: list[dict]) -> str:
    names = [r["name"] for r in rs]
    x = range(len(rs))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rs) + 4), 4.2))
    wr = [m(r, "eval.win_rate") for r in rs]
    lo = [w - m(r, "eval.win_rate_ci95")[0] for w, r in zip(wr, rs)]
    hi = [m(r, "eval.win_rate_ci95")[1] - w for w, r in zip(wr, rs)]
    axes[0].bar(x, wr, color="tab:blue", alpha=0.7, label="strict win rate (95% Wilson CI)")
    axes[0].errorbar(x, wr, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3)
    axes[0].plot(x, [m(r, "eval.win_rate_ties_half") for r in rs], "D", color="tab:orange", label="ties as half")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"win rate vs SFT (reward-model judge, {B['held']} held-out prompts)")
    d = [m(r, "eval.gold_accuracy_diff") for r in rs]
    dlo = [v - m(r, "eval.gold_accuracy_diff_ci95")[0] for v, r in zip(d, rs)]
    dhi = [m(r, "eval.gold_accuracy_diff_ci95")[1] - v for v, r in zip(d, rs)]
    axes[1].bar(x, d, color="tab:green", alpha=0.7, label="gold accuracy DPO - SFT (95% CI)")
    axes[1].errorbar(x, d, yerr=[dlo, dhi], fmt="none", ecolor="black", capsize=3)
    axes[1].axhline(0, color="grey", lw=0.8)
    top = max(v + h for v, h in zip(d, dhi))
    if top > 0:
        axes[1].set_ylim(top=top * 1.25)  # room for the legend above the error bars
    axes[1].set_title(f"gold accuracy gain over SFT ({B['gold']} gold prompts)")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save(fig, f"{s}_outcomes.png")


def plot_frontier(tables: dict) -> str | None:
    betas = sorted(rows(tables, "beta_sweep"), key=lambda r: r["params"]["dpo.beta"])
    losses = [r for r in rows(tables, "losses") if r["params"]["dpo.loss"] != "sigmoid"]  # sigmoid = the β=1 point
    if not betas and not losses:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    ref = (betas or losses)[0]
    base_beta = next(r for s in tables for r in tables[s] if r["name"] == "baseline")["params"]["dpo.beta"]
    blues = plt.get_cmap("viridis")
    others = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (0,)]
    markers = "sD^vPX<>"
    for ax, key, sft_key, title in ((axes[0], "eval.gold_accuracy_dpo", "eval.gold_accuracy_sft",
                                     f"gold accuracy ({B['gold']} gold prompts)"),
                                    (axes[1], "eval.reward_mean_dpo", "eval.reward_mean_sft",
                                     f"mean reward-model score ({B['held']} held-out prompts)")):
        ax.plot(0, m(ref, sft_key), "*", ms=14, color="black", label="SFT (KL 0)")
        if betas:
            ax.plot([m(r, "eval.kl_dpo_sft") for r in betas], [m(r, key) for r in betas], ":", color="grey", lw=0.8)
            for i, r in enumerate(betas):
                ax.plot(m(r, "eval.kl_dpo_sft"), m(r, key), "o", ms=8, color=blues(i / max(len(betas) - 1, 1) * 0.9),
                        label=f"sigmoid β={fmt_val(r['params']['dpo.beta'])}")
        for i, r in enumerate(losses):
            p = r["params"]
            label = p["dpo.loss"] + (f" (β={fmt_val(p['dpo.beta'])})" if p["dpo.beta"] != base_beta else "")
            ax.plot(m(r, "eval.kl_dpo_sft"), m(r, key), markers[i % len(markers)], ms=9, mec="black", mew=0.5,
                    color=others[i % len(others)], label=label)
        ax.set_xlabel("KL(DPO || SFT) estimate per answer (nats, kl_dpo_sft)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
               title="circles: DPO β sweep (dotted: β order)")
    fig.suptitle("Reward vs KL frontier (cf. DPO paper, Fig. 2 left: controlled sentiment)")
    fig.tight_layout()
    return save(fig, "frontier.png")


# --- paragraphs ----------------------------------------------------------------------------------------------

def steps(curves: dict, s: str, name: str, key: str) -> list[float]:
    return curves.get(s, {}).get(name, {}).get("steps", {}).get(key) or []


def epochs(curves: dict, s: str, name: str, split: str, key: str) -> list[float]:
    return curves.get(s, {}).get(name, {}).get("epochs", {}).get(split, {}).get(key) or []


def approx(a, b, tol=1e-5) -> bool:
    return a is not None and b is not None and abs(a - b) <= tol


def moved(a, b, what="", tol=0.0005) -> str:
    if approx(a, b, tol):
        return f"stayed at {f3(a)}{what}"
    return f"{'rose' if b > a else 'fell'} from {f3(a)} to {f3(b)}{what}"


def para_beta0(tables, curves, base) -> str | None:
    r = row(tables, "break_it", "break-beta0")
    if r is None:
        return None
    tr = epochs(curves, "break_it", "break-beta0", "train", "loss")
    sl, gn = steps(curves, "break_it", "break-beta0", "loss"), steps(curves, "break_it", "break-beta0", "grad_norm")
    at_log2 = bool(tr) and all(approx(v, LOG2, 1e-5) for v in tr) and all(approx(v, LOG2, 1e-5) for v in sl)
    out = ["**`dpo.beta=0`.** "]
    if at_log2:
        out.append(f"The loss stayed at log 2 = {LOG2:.4f} at every one of the {len(sl)} optimizer steps and in all "
                   f"{len(tr)} epoch means (train and held-out), as the seed predicts: -log σ(0·h) does not depend on "
                   "the policy. ")
    else:
        out.append(f"The train loss was not constant at log 2: it went from {f3(tr[0]) if tr else '-'} to "
                   f"{f3(tr[-1]) if tr else '-'}. ")
    if gn:
        if max(gn) == 0:
            out.append(f"The gradient norm logged before clipping was exactly 0 at all {len(gn)} steps, so AdamW never "
                       "moved the adapter: training did not stall, it never started. ")
        else:
            out.append(f"The logged gradient norm was not zero (max {max(gn):.3g}), contrary to the seed. ")
    same = m(r, "eval.identical_share") == 1 and approx(m(r, "eval.gold_accuracy_dpo"), m(r, "eval.gold_accuracy_sft"))
    if same:
        out.append(f"The evaluation agrees: all held-out answers are identical to SFT's (identical share "
                   f"{f2(m(r, 'eval.identical_share'))}), gold accuracy is SFT's {f3(m(r, 'eval.gold_accuracy_sft'))}, "
                   f"the KL estimate is {f3(m(r, 'eval.kl_dpo_sft'))}, and the strict win rate is "
                   f"{f2(m(r, 'eval.win_rate'))} ({f2(m(r, 'eval.win_rate_ties_half'))} with ties as half: every prompt "
                   "is a tie). ")
    else:
        out.append(f"Yet the evaluated model differs from SFT: identical share {f2(m(r, 'eval.identical_share'))}, gold "
                   f"accuracy {f3(m(r, 'eval.gold_accuracy_sft'))} -> {f3(m(r, 'eval.gold_accuracy_dpo'))}. ")
    if m(r, "dpo.train.pair_accuracy") == 0:
        out.append("Pair accuracy reads 0.00, not 0.50: the pipeline counts a pair as right when β·h > 0 strictly, and "
                   "β·h is identically 0; kl_chosen and kl_rejected are "
                   f"{f3(m(r, 'dpo.train.kl_chosen'), True)} and {f3(m(r, 'dpo.train.kl_rejected'), True)} because the "
                   "policy is still the SFT model.")
    return "".join(out)


def para_beta10(tables, curves, base) -> str | None:
    r = row(tables, "break_it", "break-beta10")
    d = row(tables, "break_it", "break-default") or base
    if r is None:
        return None
    b10, b1 = r["params"]["dpo.beta"], d["params"]["dpo.beta"]
    tr, trd = epochs(curves, "break_it", "break-beta10", "train", "loss"), epochs(curves, "break_it", d["name"], "train", "loss")
    acc = epochs(curves, "break_it", "break-beta10", "train", "pair_accuracy")
    sl, gn = steps(curves, "break_it", "break-beta10", "loss"), steps(curves, "break_it", "break-beta10", "grad_norm")
    out = [f"**`dpo.beta={fmt_val(b10)}`.** "]
    if tr and trd:
        out.append(f"The train loss fell to {f3(tr[0])} after epoch 1 (default β={fmt_val(b1)}: {f3(trd[0])}) and to "
                   f"{f3(tr[-1])} after epoch {len(tr)} (default: {f3(trd[-1])}); train pair accuracy was "
                   f"{f3(acc[0]) if acc else '-'} after epoch 1 and {f3(m(r, 'dpo.train.pair_accuracy'))} at the end. ")
    if sl and gn and tr:
        per_epoch = len(sl) // len(tr)
        last = sl[-per_epoch:]
        tiny = sum(v < 0.01 for v in last)
        g_first = statistics.median(gn[:per_epoch])
        g_last = statistics.median(gn[-per_epoch:])
        below = next((i + 1 for i, v in enumerate(tr) if v < 0.1), None)
        below_d = next((i + 1 for i, v in enumerate(trd) if v < 0.1), None)
        out.append(f"In the last epoch {tiny} of {per_epoch} batch losses were below 0.01 and the median gradient "
                   f"norm (before clipping) was {g_last:.3g}, against {g_first:.3g} in the first epoch. ")
        if tiny >= per_epoch / 2 and g_last < g_first / 10:
            out.append("So the sigmoid did saturate: once β·h is large for a pair, σ(-β·h) ≈ 0 and that pair stops "
                       "contributing. ")
            if tr[0] > 0.3:
                first = next((i for i, v in enumerate(sl) if v < 0.1), None)
                out.append(f"But not \"almost immediately\" as the seed says: the first batch loss below 0.1 came at "
                           f"step {first if first is not None else '-'} of {len(sl)}, the first epoch's mean loss was still "
                           f"{f3(tr[0])}, and the epoch mean fell below 0.1 only "
                           + (f"at epoch {below}" if below else "never") + " ("
                           + (f"the default β=1 got there at epoch {below_d})" if below_d else
                              f"the default β={fmt_val(b1)} never did)") + ". ")
            else:
                out.append(f"It happened almost immediately, as the seed says: the first epoch's mean loss was "
                           f"already {f3(tr[0])}. ")
        else:
            out.append("That is not the clean saturation the seed describes: the gradient did not collapse across the "
                       "board. ")
    kl, kld = m(r, "dpo.train.kl_rejected"), m(d, "dpo.train.kl_rejected")
    out.append(f"What stalled is how far the policy moved: β·h only has to reach a few units, so h (and the KLs) "
               f"stay small: kl_rejected {f3(kl, True)} vs {f3(kld, True)} at β={fmt_val(b1)}, "
               f"kl_dpo_sft {f3(m(r, 'eval.kl_dpo_sft'))} vs {f3(m(d, 'eval.kl_dpo_sft'))}, "
               f"{pct(m(r, 'eval.identical_share'))} of held-out answers identical to SFT's (vs "
               f"{pct(m(d, 'eval.identical_share'))}). ")
    g, gd = m(r, "eval.gold_accuracy_dpo"), m(d, "eval.gold_accuracy_dpo")
    out.append(f"Gold accuracy reached {f3(g)} ({'below' if g < gd else 'above' if g > gd else 'equal to'} the "
               f"default's {f3(gd)}) and the strict win rate {f2(m(r, 'eval.win_rate'))} (default "
               f"{f2(m(d, 'eval.win_rate'))}). ")
    if m(r, "dpo.train.loss") is not None and m(r, "dpo.train.loss") < m(d, "dpo.train.loss") and g < gd:
        out.append("A far lower training loss with a worse model: at large β the loss measures how confidently the "
                   "pairs are ranked, not how much the policy improved.")
    return "".join(out)


def para_noise(tables, curves, base) -> str | None:
    r = row(tables, "break_it", "break-labelnoise")
    d = row(tables, "break_it", "break-default") or base
    if r is None:
        return None
    sw, n_train = m(r, "prepare.label_swapped"), None
    out = [f"**`data.label_noise={fmt_val(r['params']['data.label_noise'])}`.** "]
    out.append(f"`prepare` swapped chosen and rejected in {sw} training pairs (held-out pairs are never swapped). ")
    a, ad = m(r, "dpo.train.pair_accuracy"), m(d, "dpo.train.pair_accuracy")
    h, hd = m(r, "dpo.heldout.pair_accuracy"), m(d, "dpo.heldout.pair_accuracy")
    out.append(f"Final train pair accuracy (measured against the noisy labels) was {f3(a)} against {f3(ad)} without "
               f"noise, {'lower by ' + f3(ad - a) if a < ad else 'not lower'}; held-out pair accuracy (clean labels) "
               f"was {f3(h)} against {f3(hd)}. ")
    acc = epochs(curves, "break_it", "break-labelnoise", "train", "pair_accuracy")
    if acc:
        half = acc[len(acc) // 2:]
        plateau = max(half) - min(half)
        out.append(f"Over the second half of training it moved by {f3(plateau)} ({f3(min(half))}-{f3(max(half))}), "
                   + ("so it did plateau lower, as the seed expects. " if plateau < 0.03 and a < ad else
                      "so it had not settled. "))
    n_train = m(r, "prepare.pairs.train")
    if n_train and sw:
        ceiling = 1 - sw / n_train
        extra = round((a - ceiling) * n_train)
        out.append(f"A model that ranked every pair by its true preference would score at most 1 - {sw}/{n_train} = "
                   f"{f3(ceiling)} against these labels; "
                   + (f"{f3(a)} means that in the last epoch it ranked at least {extra} of the {sw} flipped pairs "
                      "the wrong way round, i.e. DPO partly fits wrong labels, the sensitivity the seed warns about. " if extra > 0 else
                      f"{f3(a)} is at or below that ceiling, so the flipped pairs need not have been memorised. "))
    w, wd = m(r, "eval.win_rate"), m(d, "eval.win_rate")
    g, gd = m(r, "eval.gold_accuracy_dpo"), m(d, "eval.gold_accuracy_dpo")
    out.append(f"The strict win rate went from {f2(wd)} to {f2(w)} and gold accuracy from {f3(gd)} to {f3(g)} "
               f"(gain over SFT {f3(m(r, 'eval.gold_accuracy_diff'), True)} {ci(m(r, 'eval.gold_accuracy_diff_ci95'))} "
               f"vs {f3(m(d, 'eval.gold_accuracy_diff'), True)} {ci(m(d, 'eval.gold_accuracy_diff_ci95'))}). ")
    rh, rhd = reward_heldout_accuracy(r), reward_heldout_accuracy(d)
    if rh is not None and rhd is not None and not approx(rh, rhd):
        out.append(f"Caveat on the win rate: the noise also reaches the judge, because the reward model trains on the "
                   f"same noisy pairs (its held-out accuracy {moved(rhd, rh)}), so the two win rates come from different "
                   "judges; the gold accuracy does not depend on the judge. ")
    ci_r, ci_d = m(r, "eval.gold_accuracy_diff_ci95"), m(d, "eval.gold_accuracy_diff_ci95")
    if g < gd and ci_r and ci_d:
        overlap = ci_r[1] >= ci_d[0] and ci_d[1] >= ci_r[0]
        out.append(f"The two runs' 95% intervals for the gain over SFT {'overlap' if overlap else 'do not overlap'}, so "
                   f"the gold drop of {f3(gd - g)} is "
                   + (f"not clearly beyond the sampling noise of {B['gold']} gold prompts (and of a single seed)."
                      if overlap else f"beyond the sampling noise of the {B['gold']} gold prompts."))
    return "".join(out)


def para_self(tables, curves, base) -> str | None:
    r = row(tables, "break_it", "break-selfref")
    d = row(tables, "break_it", "break-default") or base
    if r is None:
        return None
    keys = ("dpo.train.implicit_r_w", "dpo.train.implicit_r_l", "dpo.train.kl_chosen", "dpo.train.kl_rejected",
            "dpo.heldout.implicit_r_w", "dpo.heldout.implicit_r_l")
    zero = all(m(r, k) == 0 for k in keys)
    sl, gn = steps(curves, "break_it", "break-selfref", "loss"), steps(curves, "break_it", "break-selfref", "grad_norm")
    const = bool(sl) and all(approx(v, LOG2, 1e-5) for v in sl)
    out = ["**`dpo.reference=self`.** "]
    out.append("The implicit rewards " + ("stayed at exactly zero" if zero else "did not stay at zero") +
               f" (train implicit_r_w {f3(m(r, 'dpo.train.implicit_r_w'), True)}, implicit_r_l "
               f"{f3(m(r, 'dpo.train.implicit_r_l'), True)}, kl_chosen {f3(m(r, 'dpo.train.kl_chosen'), True)}, "
               f"kl_rejected {f3(m(r, 'dpo.train.kl_rejected'), True)}) and the loss "
               + (f"was log 2 = {LOG2:.4f} at all {len(sl)} steps" if const else "was not constant") +
               f"; pair accuracy reads {f2(m(r, 'dpo.train.pair_accuracy'))} for the same reason as at β=0. ")
    if gn and min(gn) > 0:
        out.append(f"But, unlike β=0, the gradient was never zero (norm {min(gn):.3g} to {max(gn):.3g} per step, "
                   f"clipped to {B['clip']}), and here the run goes further than the seed: a constant loss does not mean "
                   "nothing is learned. With π_ref = stopgrad(π_θ), h is 0 in value but its gradient is ∇log π(y_w) - "
                   "∇log π(y_l), so every step pushes the chosen answer up and the rejected one down by a fixed "
                   "weight β/2, with no KL anchor, because the anchor moves with the policy. ")
        kl, kld = m(r, "eval.kl_dpo_sft"), m(d, "eval.kl_dpo_sft")
        g, gd, gs = m(r, "eval.gold_accuracy_dpo"), m(d, "eval.gold_accuracy_dpo"), m(r, "eval.gold_accuracy_sft")
        out.append(f"The policy did move away from SFT: the KL estimate against SFT is {f3(kl)} (default {f3(kld)}), "
                   f"{pct(m(r, 'eval.identical_share'))} of held-out answers are identical to SFT's, and gold accuracy "
                   f"went {f3(gs)} -> {f3(g)} (default run: {f3(gd)}). ")
        if g >= gd:
            out.append(f"In this run the unanchored objective did at least as well as the default on gold accuracy ({f3(g)} vs "
                       f"{f3(gd)}): in {r['params'].get('dpo.epochs')} epochs at lr {fmt_val(r['params'].get('dpo.lr'))} the drift stayed small, so the missing anchor did no visible "
                       "harm yet; nothing in the objective would stop it in a longer run. ")
        else:
            out.append(f"Gold accuracy ended below the default's ({f3(g)} vs {f3(gd)}). ")
        out.append("The logged diagnostics (loss, kl_*, implicit rewards) are blind to all of this because they are "
                   "measured against the moving reference; only the evaluation against the frozen SFT model sees it. "
                   "That confirms the reference model's role in a sharper way than the seed states: without a fixed "
                   "reference the DPO diagnostics lose their meaning and the KL constraint disappears, while the "
                   "gradient still does something.")
    elif gn:
        out.append("The gradient was zero as well, so the policy did not move.")
    return "".join(out)


def beta_paragraphs(betas: list[dict]) -> list[str]:
    kls = [m(r, "eval.kl_dpo_sft") for r in betas]
    bs = [r["params"]["dpo.beta"] for r in betas]
    dec = all(x >= y for x, y in zip(kls, kls[1:]))
    peak = max(range(len(betas)), key=lambda i: kls[i])
    out = []
    if dec:
        out.append(f"The KL to SFT falls monotonically as β rises ({f3(kls[0])} at β={fmt_val(bs[0])}, {f3(kls[-1])} "
                   f"at β={fmt_val(bs[-1])}), as the DPO objective's KL penalty predicts. ")
    else:
        out.append(f"Contrary to what the β·KL penalty in DPO's objective suggests, the KL to SFT does not fall "
                   f"monotonically as β rises: it is {f3(kls[0])} at β={fmt_val(bs[0])}, peaks at {f3(kls[peak])} at "
                   f"β={fmt_val(bs[peak])} and is {f3(kls[-1])} at β={fmt_val(bs[-1])}. ")
        if peak > 0:
            small, top = betas[0], betas[peak]
            kr_s, kr_t = m(small, "dpo.train.kl_rejected"), m(top, "dpo.train.kl_rejected")
            rel = ("about as much as" if abs(kr_s - kr_t) <= 0.1 * abs(kr_t) else
                   "more than" if abs(kr_s) > abs(kr_t) else "less than")
            out.append(f"At β={fmt_val(bs[0])} the policy's log-probs of the training answers moved {rel} at "
                       f"β={fmt_val(bs[peak])} (kl_rejected {f3(kr_s, True)} vs {f3(kr_t, True)}, kl_chosen "
                       f"{f3(m(small, 'dpo.train.kl_chosen'), True)} vs {f3(m(top, 'dpo.train.kl_chosen'), True)}), but "
                       f"its own sampled answers moved {'less' if kls[0] < kls[peak] else 'more'} (KL {f3(kls[0])} vs "
                       f"{f3(kls[peak])}) and its gold gain was {'smaller' if m(small, 'eval.gold_accuracy_diff') < m(top, 'eval.gold_accuracy_diff') else 'larger'} "
                       f"({f3(m(small, 'eval.gold_accuracy_diff'), True)} vs {f3(m(top, 'eval.gold_accuracy_diff'), True)}). "
                       "β's KL control is a property of the optimum of the DPO objective, and "
                       f"{B['epochs']} epochs of AdamW at lr {B['lr']} are far from it; Adam also divides out the overall "
                       "scale of the gradient, which β multiplies, so at a fixed budget a small β does not mean a freer "
                       "policy. This sweep therefore shows β's effect on a fixed training budget, not the frontier of "
                       "converged policies. Why the small-β policy's answers changed less although its training "
                       "log-probs changed as much is not explained by these runs (kl_dpo_sft is a Monte-Carlo estimate "
                       "from a few sampled answers per held-out prompt, so part of it may be noise; the gold accuracy "
                       "difference is not). ")
        if peak < len(betas) - 1:
            after = kls[peak:]
            out.append(f"From β={fmt_val(bs[peak])} up, the KL stays between {f3(min(after))} and {f3(max(after))} and "
                       f"is lowest at β={fmt_val(bs[peak + after.index(min(after))])}, the direction the penalty predicts, "
                       "helped by the saturation seen in `break-beta10`. ")
    best = max(betas, key=lambda r: m(r, "eval.gold_accuracy_dpo"))
    bestw = max(betas, key=lambda r: m(r, "eval.reward_mean_dpo"))
    lo_ci = m(best, "eval.gold_accuracy_diff_ci95")[0]
    close = [r for r in betas if m(r, "eval.gold_accuracy_diff") >= lo_ci]
    out.append(f"The best gold accuracy is {f3(m(best, 'eval.gold_accuracy_dpo'))} at β={fmt_val(best['params']['dpo.beta'])} "
               f"(KL {f3(m(best, 'eval.kl_dpo_sft'))}); the highest mean reward-model score is "
               f"{f3(m(bestw, 'eval.reward_mean_dpo'))} at β={fmt_val(bestw['params']['dpo.beta'])}. ")
    if len(close) > 1:
        out.append("The runs at β = " + ", ".join(fmt_val(r["params"]["dpo.beta"]) for r in close) +
                   f" all have a gold gain inside the best run's 95% interval {ci(m(best, 'eval.gold_accuracy_diff_ci95'))}, "
                   "so this sweep does not single out one β in that range. ")
    out.append(f"The final train loss runs from {f3(min(m(r, 'dpo.train.loss') for r in betas))} to "
               f"{f3(max(m(r, 'dpo.train.loss') for r in betas))} across β; it is a function of β·h and says nothing "
               "about which β is better.")
    return ["".join(out)]


def loss_paragraph(tables) -> list[str]:
    rs = rows(tables, "losses")
    if not rs:
        return []
    by_gold = sorted(rs, key=lambda r: -m(r, "eval.gold_accuracy_dpo"))
    by_win = sorted(rs, key=lambda r: (-m(r, "eval.win_rate"), -m(r, "eval.win_rate_ties_half")))
    a, b = by_gold[0], by_gold[1]
    la, lb = a["params"]["dpo.loss"], b["params"]["dpo.loss"]
    dpo = next((r for r in rs if r["params"]["dpo.loss"] == "sigmoid"), None)
    out = [f"By gold accuracy ({B['gold']} fresh prompts, judged by the exact checker), **`{la}` wins** with "
           f"{f3(m(a, 'eval.gold_accuracy_dpo'))} (gain over SFT {f3(m(a, 'eval.gold_accuracy_diff'), True)} "
           f"{ci(m(a, 'eval.gold_accuracy_diff_ci95'))}), ahead of `{lb}` at {f3(m(b, 'eval.gold_accuracy_dpo'))}, a "
           f"margin of {f3(m(a, 'eval.gold_accuracy_dpo') - m(b, 'eval.gold_accuracy_dpo'))}"]
    if dpo is not None and dpo is not a and dpo is not b:
        out.append(f"; plain DPO (`sigmoid`) has {f3(m(dpo, 'eval.gold_accuracy_dpo'))}")
    out.append(". ")
    if dpo is not None and dpo is not a:
        sds = [statistics.stdev([m(r, "eval.gold_accuracy_dpo") for _, r in seed_stats(tables, l)])
               for l in (la, lb) if len(seed_stats(tables, l)) > 1]
        gap = m(a, "eval.gold_accuracy_dpo") - m(dpo, "eval.gold_accuracy_dpo")
        out.append(f"`{la}` beats plain DPO by {f3(gap)} in gold accuracy")
        if sds:
            out.append(f", {gap / max(sds):.0f} times the larger seed standard deviation measured below ({f3(max(sds))}); "
                       "DPO itself was not rerun with other seeds. " if gap > 3 * max(sds) else
                       f", which is within about three seed standard deviations ({f3(max(sds))}) measured below. ")
        else:
            out.append(". ")
    worst = by_gold[-1]
    out.append(f"The lowest is `{worst['params']['dpo.loss']}` at {f3(m(worst, 'eval.gold_accuracy_dpo'))}. ")
    neg = [r for r in rs if m(r, "dpo.train.loss") is not None and m(r, "dpo.train.loss") < 0]
    for r in neg:
        out.append(f"`{r['params']['dpo.loss']}`'s train loss is negative ({f3(m(r, 'dpo.train.loss'))}): its "
                   "label-noise correction term is not bounded below (see `losses.py`), so its loss value is not "
                   "comparable with the others. ")
    w0 = by_win[0]
    same_top = w0 is a
    out.append(f"By the reward-model win rate the top loss is `{w0['params']['dpo.loss']}` "
               f"({f2(m(w0, 'eval.win_rate'))}, CI {ci(m(w0, 'eval.win_rate_ci95'))})"
               + (", the same loss." if same_top else
                  f"; `{la}` has {f2(m(a, 'eval.win_rate'))} {ci(m(a, 'eval.win_rate_ci95'))}. With 50 prompts the "
                  "win-rate intervals are wide, so gold accuracy is the measure we rank by.") + " ")
    return ["".join(out)]


def seed_stats(tables, loss: str) -> list[tuple[str, dict]]:
    """(seed label, row) for a loss: the seed-42 row from the losses set, then the seeds set's rows."""
    out = []
    r42 = next((r for r in rows(tables, "losses") if r["params"]["dpo.loss"] == loss), None)
    if r42 is not None:
        out.append(("42", r42))
    for r in rows(tables, "seeds"):
        if r["params"]["dpo.loss"] == loss:
            out.append((str(r["params"]["dpo.seed"]), r))
    return out


def seeds_section(tables) -> tuple[list[str], list[str]]:
    """(markdown lines of the seed table, paragraphs)."""
    srs = rows(tables, "seeds")
    if not srs:
        return [], []
    losses = list(dict.fromkeys(r["params"]["dpo.loss"] for r in srs))
    lines = ["| loss | metric | " + " | ".join(f"seed {s}" for s, _ in seed_stats(tables, losses[0])) +
             " | mean | sd | min-max |", "|---" * (len(seed_stats(tables, losses[0])) + 5) + "|"]
    summary = {}
    for loss in losses:
        st = seed_stats(tables, loss)
        for key, label in (("eval.gold_accuracy_dpo", "gold accuracy"), ("eval.win_rate", "win rate (strict)"),
                           ("eval.win_rate_ties_half", "win rate (ties half)"), ("eval.kl_dpo_sft", "kl_dpo_sft")):
            vals = [m(r, key) for _, r in st]
            mean, sd = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
            summary[(loss, key)] = (vals, mean, sd, [s for s, _ in st])
            lines.append(f"| `{loss}` | {label} | " + " | ".join(f3(v) for v in vals) +
                         f" | {f3(mean)} | {f3(sd)} | {f3(min(vals))}-{f3(max(vals))} |")
    paras = []
    if len(losses) >= 2:
        a, b = losses[0], losses[1]
        va, ma, sa, seeds_a = summary[(a, "eval.gold_accuracy_dpo")]
        vb, mb, sb, seeds_b = summary[(b, "eval.gold_accuracy_dpo")]
        if mb > ma:
            a, b, va, ma, sa, seeds_a, vb, mb, sb, seeds_b = b, a, vb, mb, sb, seeds_b, va, ma, sa, seeds_a
        diff = ma - mb
        paired = {s: v for s, v in zip(seeds_a, va)}
        wins = sum(1 for s, v in zip(seeds_b, vb) if s in paired and paired[s] > v)
        common = sum(1 for s in seeds_b if s in paired)
        overlap = min(va) <= max(vb)
        se = math.sqrt(sa ** 2 / len(va) + sb ** 2 / len(vb)) if len(va) > 1 and len(vb) > 1 else float("nan")
        z = diff / se if se and not math.isnan(se) else float("nan")
        if not overlap:
            verdict = "**outside the seed spread**: every seed of one loss beats every seed of the other"
        elif not math.isnan(z) and z >= 2:
            verdict = (f"**at the edge of the seed spread**: the ranges overlap, but the means differ by {z:.1f} standard "
                       f"errors ({f3(se)}), so `{a}` is probably better on average, by about as much as one seed differs "
                       "from another")
        else:
            verdict = (f"**inside the seed spread** (the means differ by {z:.1f} standard errors, {f3(se)}); the order of "
                       "the two best losses on one seed is not a reliable result at this scale")
        paras.append(
            f"Over {len(va)} DPO seeds each (the SFT model, data and reward model fixed; `dpo.seed` varies the LoRA "
            f"initialisation and batch order), `{a}` averages {f3(ma)} gold accuracy (sd {f3(sa)}, range "
            f"{f3(min(va))}-{f3(max(va))}) and `{b}` {f3(mb)} (sd {f3(sb)}, range {f3(min(vb))}-{f3(max(vb))}). "
            f"The difference of the means is {f3(diff)}; `{a}` was ahead at {wins} of {common} matched seeds, and the "
            f"two ranges {'overlap' if overlap else 'do not overlap'}. So in gold accuracy the difference is {verdict}.")
        wa, wma = summary[(a, "eval.win_rate")][0], summary[(a, "eval.win_rate")][1]
        wb, wmb = summary[(b, "eval.win_rate")][0], summary[(b, "eval.win_rate")][1]
        w_overlap = min(wa) <= max(wb) and min(wb) <= max(wa)
        ka, kb = summary[(a, "eval.kl_dpo_sft")][1], summary[(b, "eval.kl_dpo_sft")][1]
        paras.append(
            f"The strict win rate separates them {'less' if w_overlap else 'more'} clearly: `{a}` {f3(wma)} "
            f"({f3(min(wa))}-{f3(max(wa))}) vs `{b}` {f3(wmb)} ({f3(min(wb))}-{f3(max(wb))}), ranges that "
            f"{'overlap' if w_overlap else 'do not overlap'} (same {B['held']} prompts and the same reward-model judge in every "
            f"run, so this is seed spread only). `{a}` also moves further from SFT (mean kl_dpo_sft {f3(ka)} vs "
            f"{f3(kb)}).")
    return lines, paras


def envelope_at(points: list[tuple[float, float]], k: float) -> float | None:
    """The best y reachable at KL <= k along the β curve: running max of y over KL, linearly interpolated."""
    pts = sorted(points)
    env, best = [], -math.inf
    for x, y in pts:
        best = max(best, y)
        env.append((x, best))
    if k < env[0][0] or k > env[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(env, env[1:]):
        if x0 <= k <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (k - x0) / (x1 - x0)
    return env[-1][1]


def frontier_comparison(tables, betas) -> str:
    pts = [(m(r, "eval.kl_dpo_sft"), m(r, "eval.gold_accuracy_dpo")) for r in betas]
    kmax = max(k for k, _ in pts)
    above, within, below, beyond = [], [], [], []
    for r in rows(tables, "losses"):
        loss = r["params"]["dpo.loss"]
        if loss == "sigmoid":
            continue
        k, g = m(r, "eval.kl_dpo_sft"), m(r, "eval.gold_accuracy_dpo")
        env = envelope_at(pts, k)
        lo, hi = m(r, "eval.gold_accuracy_diff_ci95")
        half = (hi - lo) / 2
        if env is None:
            beyond.append(f"`{loss}` (KL {f3(k)}, gold {f3(g)})")
        elif g - env > half:
            above.append(f"`{loss}` ({f3(g - env, True)})")
        elif env - g > half:
            below.append(f"`{loss}` ({f3(g - env, True)})")
        else:
            within.append(f"`{loss}` ({f3(g - env, True)})")
    text = ("Against DPO's β curve (the best gold accuracy any β reached at the same or a smaller KL, interpolated "
            "between β points; gold accuracy relative to it in brackets) the other losses sit ")
    parts = []
    if above:
        parts.append("above it by more than their own 95% half-interval: " + ", ".join(above))
    if within:
        parts.append("within that margin of it: " + ", ".join(within))
    if below:
        parts.append("below it by more than that margin: " + ", ".join(below))
    text += "; ".join(parts) + ". " if parts else "no loss falls inside the β curve's KL range. "
    if beyond:
        text += (", ".join(beyond) + f" went further from SFT than any β did (largest β-sweep KL {f3(kmax)}), so it "
                 "cannot be compared at equal KL; part of its gain may simply be moving further, which no β of this "
                 f"sweep did in {B['epochs']} epochs.")
    return text


def baseline_note(tables) -> str:
    bases = {}
    for s in tables:
        for r in tables[s]:
            if r["name"] == "baseline":
                bases.setdefault(r["rev"], r)
    if len(bases) < 2:
        return ""
    first = next(iter(bases.values()))
    same = all(b["params"] == first["params"] and b["metrics"] == first["metrics"] for b in bases.values())
    return (" The sets ran on different commits (the branch moved between sets); " +
            ("their baseline rows have identical params and metrics, so the sets are comparable."
             if same else "their baseline rows DIFFER, so compare across sets with care."))


# --- page ----------------------------------------------------------------------------------------------------

# (set, A, B, what it asks): experiments/compare.py's paired bootstrap over prompts and seeds, for each set exported
COMPARISONS = (("seeds", "seed-orpo", "seed-sigmoid", "The two best losses of the losses set, over seeds 1-3"),
               ("rpo", "rpo-rpo", "rpo-sigmoid",
                "RPO (`dpo.loss: [sigmoid, sft]`) against sigmoid alone on the break-hacking configuration (lr 1e-3)"))


def comparisons_section() -> list[str]:
    import compare

    found = [(c, compare.compare(*c[:3])) for c in COMPARISONS if (RESULTS / f"{c[0]}.per_prompt.json").exists()]
    if not found:
        return []
    md = ["## Paired comparisons over seeds", "",
          "`python experiments/compare.py SET A B`: runs paired by seed and by prompt, 95% intervals from a bootstrap "
          "that resamples both (see its docstring).", ""]
    for (set_name, a, b, what), result in found:
        md += [f"### {what}", "", f"`python experiments/compare.py {set_name} {a} {b}`", "",
               compare.markdown(result, a, b), ""]
    return md


def main() -> None:
    tables, curves = load()
    FIGS.mkdir(parents=True, exist_ok=True)
    base = next(r for s in tables for r in tables[s] if r["name"] == "baseline")
    B.update(held=m(base, "eval.n"), gold=m(base, "eval.gold_n"), train=m(base, "prepare.pairs.train"),
             clip=fmt_val(base["params"].get("dpo.max_grad_norm")), epochs=base["params"].get("dpo.epochs"),
             lr=fmt_val(base["params"].get("dpo.lr")))
    baselines = sorted({r["baseline"] for s in tables for r in tables[s]})
    md = ["# Experiments: break it, beta sweep, loss variants, seed spread", "",
          "<!-- Generated by experiments/report.py from experiments/results/*.json. Do not edit by hand. -->", "",
          "Every number on this page comes from the tables in `experiments/results/`, which `experiments/run.sh` "
          "exported from real `dvc exp run --queue` runs with `dvc exp show --json` (params and metrics) and "
          "`dvc plots diff --json --split` (per-epoch and per-step curves). Experiment refs do not travel with a "
          "clone; those JSON files do. To regenerate everything:", "",
          "```bash", "bash experiments/run.sh all            # queue, run and export the four sets",
          ".venv/bin/python experiments/report.py  # this page and docs/experiments/*.png", "```", "",
          f"Baseline commit{'s' if len(baselines) > 1 else ''}: " + ", ".join(f"`{b[:7]}`" for b in baselines) +
          f" (default `params.yaml`: loss `{base['params']['dpo.loss']}`, β={fmt_val(base['params']['dpo.beta'])}, "
          f"{base['params'].get('dpo.epochs')} epochs at lr {fmt_val(base['params'].get('dpo.lr'))}, LoRA DPO on the "
          "SFT model). Every experiment changes only the params listed in its row." + baseline_note(tables), "",
          "How to read the columns:", "",
          f"- **train loss, pair acc, kl_chosen, kl_rejected**: the last epoch's pair-weighted means on the {B['train']} "
          "training pairs (`metrics/dpo/metrics.json`); kl_* = summed log π - log π_ref of the chosen / rejected "
          "answer. simpo and orpo use no reference in their loss, but the training loop still logs kl_*, implicit "
          "rewards and pair accuracy against the SFT reference log-probs, so these columns mean the same for every "
          f"loss. Held-out pair acc is on the {B['held']} held-out pairs. The train loss is each loss's own value and is not "
          "comparable across losses or β.",
          f"- **win rate**: DPO vs SFT greedy answers on the {B['held']} held-out prompts, judged by the reward model; "
          f"strict wins / {B['held']} with its 95% Wilson interval; identical answers are ties. \"Ties half\" counts a tie as half a "
          "win.",
          f"- **gold SFT -> DPO**: exact-checker accuracy on {B['gold']} fresh prompts; diff is the paired difference with its "
          "95% interval.",
          "- **kl_dpo_sft**: Monte-Carlo estimate of KL(DPO || SFT) per answer from sampled DPO answers.", ""]

    for s in SETS:
        if s not in tables:
            continue
        rs = rows(tables, s)
        failed = [r["name"] for r in tables[s] if r["name"] != "baseline" and r["status"] != "success"]
        extra = []
        if s == "seeds":  # the seed-42 runs of the same losses live in the losses set
            for loss in dict.fromkeys(r["params"]["dpo.loss"] for r in rs):
                r42 = next((r for r in rows(tables, "losses") if r["params"]["dpo.loss"] == loss), None)
                if r42 is not None:
                    extra.append(r42)
        md += [f"## {SET_TITLES[s]}", ""]
        if s == "break_it":
            md += ["The lab's four \"things to break\", each a single `-S` change from the default, next to the default "
                   "config rerun as an experiment (`break-default`).", ""]
        elif s == "beta_sweep":
            md += ["The DPO (`sigmoid`) loss at seven values of β; everything else is the default.", ""]
        elif s == "losses":
            lines = ["Every loss in `stages/preftune/train/losses.py` at its documented default: params.yaml's "
                     f"β={fmt_val(base['params']['dpo.beta'])} for the referenced losses, β=2 for simpo (README's "
                     "Losses table: \"use beta of about 2\", γ = `dpo.simpo_gamma`), and orpo, which ignores β "
                     "(λ = `dpo.orpo_lambda`). cdpo and robust use `dpo.label_smoothing`."]
            md += lines + [""]
        elif s == "seeds":
            md += ["The two best losses by gold accuracy, rerun with `dpo.seed` 1, 2 and 3; seed 42 is their row in "
                   "the losses set (`dpo.seed: null` means the global seed, 42).", ""]
        md += [table(([base] if s != "seeds" else []) + extra + rs, base), ""]
        if failed:
            md += [f"Failed or missing experiments: {', '.join(failed)} (see `dvc queue logs <name>`).", ""]
        names = [r["name"] for r in rs]
        curve_src = dict(curves.get(s, {}))
        if s == "seeds":
            for r in extra:
                curve_src[r["name"]] = curves.get("losses", {}).get(r["name"], {})
            names = [r["name"] for r in extra] + names
        palette = None
        outcome_rows = extra + rs
        if s == "seeds":  # group by loss: its seed-42 row first, then its other seeds
            loss_of = {r["name"]: r["params"]["dpo.loss"] for r in extra + rs}
            order = list(dict.fromkeys(loss_of[n] for n in names))
            names = sorted(names, key=lambda n: (order.index(loss_of[n]), not n.startswith("loss-"), n))
            palette = group_colors([loss_of[n] for n in names])
            outcome_rows = sorted(outcome_rows, key=lambda r: names.index(r["name"]))
        md += [f"![{SET_TITLES[s]} curves]({plot_curves(s, names, curve_src, palette)})", "",
               f"![{SET_TITLES[s]} win rate and gold accuracy]({plot_outcomes(s, outcome_rows)})", ""]
        if s == "break_it":
            md += ["Per optimizer step (from `metrics/dpo_steps`), the loss and the gradient norm before clipping:", "",
                   f"![break it, per step]({plot_steps(names, curves.get('break_it', {}))})", "",
                   "### What the runs showed", ""]
            for p in (para_beta0, para_beta10, para_noise, para_self):
                text = p(tables, curves, base)
                if text:
                    md += [text, ""]
        if s == "beta_sweep":
            betas = sorted(rs, key=lambda r: r["params"]["dpo.beta"])
            if betas:
                md += beta_paragraphs(betas) + [""]
        if s == "losses":
            md += loss_paragraph(tables) + [""]
        if s == "seeds":
            lines, paras = seeds_section(tables)
            md += lines + [""] + paras + [""]

    frontier = plot_frontier(tables)
    if frontier:
        md += ["## Reward vs KL frontier", "",
               "One point per β of the sweep (DPO) and per loss of the losses set, with SFT at KL 0, as in the DPO "
               "paper's controlled-sentiment figure. Left: gold accuracy; right: the reward model's mean score on the "
               f"DPO answers to the {B['held']} held-out prompts (the judge is the same reward model in every run, except in "
               "`break-labelnoise`, which is not plotted).", "",
               f"![frontier]({frontier})", ""]
        pts = [(r["name"], m(r, "eval.kl_dpo_sft"), m(r, "eval.gold_accuracy_dpo"), m(r, "eval.reward_mean_dpo"))
               for s in ("beta_sweep", "losses") for r in rows(tables, s)]
        if pts:
            best_g = max(pts, key=lambda p: p[2])
            best_r = max(pts, key=lambda p: p[3])
            text = (f"Across these {len(pts)} runs the highest gold accuracy is `{best_g[0]}` ({f3(best_g[2])} at KL "
                    f"{f3(best_g[1])}) and the highest mean reward `{best_r[0]}` ({f3(best_r[3])} at KL "
                    f"{f3(best_r[1])}). ")
            betas = rows(tables, "beta_sweep")
            if betas:
                text += frontier_comparison(tables, betas)
            md += [text, ""]
    md += comparisons_section()
    (DOCS / "experiments.md").write_text("\n".join(md).rstrip() + "\n")
    print(f"report: wrote {DOCS / 'experiments.md'} and {len(list(FIGS.glob('*.png')))} PNGs in {FIGS}")


if __name__ == "__main__":
    main()
