"""End to end: the real `dvc` CLI runs the whole pipeline once on a tiny configuration, then the tests
check what DVC makes of it: nothing to do when nothing changed, selective reruns after a params change,
metrics / params diffs across commits, an experiment, and a remote with the run-cache in fresh clones.

One module-scoped fixture pays for the single full run (about a minute on 2 CPU cores); the tests reuse
its clone. Tests that need the second commit (dpo.beta 0.2) get it through `Pipeline.beta_commit()`,
which runs that step once, so any single test can also be run on its own.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from plots_page import charts_in, declared_plots, div_id, dump_dom, field_values, find_chromium, revs, screenshot

from dvc_helpers import (ENV, EVALUATION, ROOT, STAGES, TINY, assert_clean, assert_git_clean, dvc, edit_params,
                         free_port, git, lock_outs, output, read_params, require, stages_run, status_json, tiny_clone,
                         wait_for_port)

pytestmark = pytest.mark.slow  # the whole tiny pipeline through the real dvc


def downstream(repo: Path, stage: str) -> set[str]:
    """`stage` and every stage that depends on it, from `dvc dag --dot` (edges "dep" -> "dependent")."""
    edges = []
    for line in dvc("dag", "--dot", cwd=repo).stdout.splitlines():
        if "->" in line:
            src, dst = (part.strip().strip(";").strip('"') for part in line.split("->"))
            edges.append((src, dst))
    found, todo = {stage}, [stage]
    while todo:
        current = todo.pop()
        for src, dst in edges:
            if src == current and dst not in found:
                found.add(dst)
                todo.append(dst)
    return found


class Pipeline:
    def __init__(self, base: Path):
        self.base = base
        self.repo = base / "repo"
        self.remote = base / "remote"
        self.logs: dict[str, subprocess.CompletedProcess] = {}
        self.first_commit = ""  # the full run, dpo.beta 0.1
        self._beta: dict | None = None

    def beta_commit(self) -> dict:
        """Step 2 of the story, once: dpo.beta 0.1 -> 0.2, status, repro, commit."""
        if self._beta is None:
            assert_git_clean(self.repo)
            edit_params(self.repo, dpo={"beta": 0.2})
            status = status_json(self.repo)
            repro = dvc("repro", cwd=self.repo)
            git("add", "-A", cwd=self.repo)
            git("commit", "-q", "-m", "dpo.beta 0.2", cwd=self.repo)
            self._beta = {"status": status, "repro": repro,
                          "commit": git("rev-parse", "HEAD", cwd=self.repo).stdout.strip()}
        return self._beta


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    p = Pipeline(tmp_path_factory.mktemp("e2e"))
    ENV["DVC_SITE_CACHE_DIR"] = str(p.base / "dvc-site-cache")  # keep DVC's per-repo state in tmp too
    # The remote is configured (and committed) before anything runs, as in a real project: `dvc push
    # --all-commits` only pushes a commit's outputs if that commit's own .dvc/config names a remote
    # (the config is read per revision; .dvc/config.local does not help), and the run-cache test needs
    # the outputs of this first run, an older commit by then, on the remote.
    tiny_clone(p.repo, remote=p.remote)

    repro = dvc("repro", cwd=p.repo, check=False)
    p.logs["repro"] = repro
    assert repro.returncode == 0, f"first `dvc repro` failed:\n{output(repro)}"
    assert stages_run(repro) == set(STAGES), output(repro)

    git("add", "-A", cwd=p.repo)
    git("commit", "-q", "-m", "first full run", cwd=p.repo)
    p.first_commit = git("rev-parse", "HEAD", cwd=p.repo).stdout.strip()
    return p


def test_full_run_outputs(pipeline):
    repo = pipeline.repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert 0.0 <= evaluation["win_rate"] <= 1.0
    assert evaluation["n"] == TINY["data"]["heldout"]
    # Next to the win rate: the judge's accuracy on the held-out pairs and on fresh pairs, each with an interval,
    # and whether it is above chance; the gold checker's win/tie/loss on the same held-out prompts.
    assert evaluation["judge_pairs"] == 10 and evaluation["judge_pairs_fresh"] == TINY["data"]["judge_pairs"]
    lo, hi = evaluation["judge_accuracy_fresh_ci95"]
    assert lo <= evaluation["judge_accuracy_fresh"] <= hi
    assert evaluation["win_rate_informative"] == (lo > 0.5)
    assert sum(evaluation[f"heldout_gold_{k}"] for k in ("wins", "ties", "losses")) == 10
    assert sum(evaluation[f"validation_{k}"] for k in ("wins", "ties", "losses")) == TINY["data"]["validation_prompts"]
    # The headline: the deciding numbers, readable in an 80-column terminal
    headline = json.loads((repo / "metrics" / "headline.json").read_text())
    assert headline["win"] == round(evaluation["win_rate"], 3) and headline["gold"] == evaluation["gold_accuracy_dpo"]
    shown = dvc("metrics", "show", "metrics/headline.json", cwd=repo).stdout
    assert "win_ci" in shown and max(map(len, shown.splitlines())) <= 80, shown
    lo, hi = evaluation["lc_win_rate_ci95"]
    assert lo <= evaluation["lc_win_rate"] <= hi and evaluation["length_ratio"] > 0
    manifest = json.loads((repo / "metrics" / "manifest.json").read_text())
    assert {"seed", "beta", "lr", "epochs", "win_rate"} <= set(manifest)
    assert manifest["win_rate"] == evaluation["win_rate"] and manifest["beta"] == TINY["dpo"]["beta"]
    prepared = json.loads((repo / "metrics" / "prepare.json").read_text())
    assert prepared["pairs"] == {"train": 30, "heldout": 10}
    assert (prepared["validation_prompts"], prepared["judge_pairs"]) == (20, 40)
    for out in ("models/sft", "models/reward", "models/dpo", "data/reference", "metrics/samples.csv"):
        assert (repo / out).exists(), out
    for model in ("sft", "reward", "dpo"):  # each carries a model card (cards.py)
        assert (repo / "models" / model / "README.md").read_text().startswith("---\nlibrary_name: transformers\n")
    assert_git_clean(repo)


def test_artifacts_get_fetches_the_merged_model(pipeline):
    """Another project fetches the trained policy by name (dvc.yaml `artifacts:`) and loads it with plain
    transformers: the LoRA adapter is merged in, so no peft is needed."""
    from transformers import AutoModelForCausalLM

    # DVC's model registry finds an artifact's versions by Git tag (GTO's name@version format), and downloads
    # it from the remote: register this run's model as v0.1.0 and push it, as the README says.
    git("tag", "-a", "dpo-model@v0.1.0", "-m", "first tiny run", pipeline.first_commit, cwd=pipeline.repo)
    dvc("push", cwd=pipeline.repo)
    target = pipeline.base / "consumer" / "dpo-model"
    target.parent.mkdir()
    dvc("artifacts", "get", str(pipeline.repo), "dpo-model", "-o", str(target), cwd=target.parent)
    assert (target / "model.safetensors").is_file() and (target / "adapter" / "adapter_config.json").is_file()
    assert not (target / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(target))
    assert type(model).__name__ == "GPT2LMHeadModel"


def test_nothing_to_do(pipeline):
    repo = pipeline.repo
    status = dvc("status", cwd=repo)
    assert "Data and pipelines are up to date." in status.stdout, output(status)
    assert status_json(repo) == {}
    repro = dvc("repro", cwd=repo)
    assert "Running stage" not in repro.stdout + repro.stderr, output(repro)
    assert "Data and pipelines are up to date." in repro.stdout, output(repro)
    assert_clean(repo)


def test_selective_rerun_beta(pipeline):
    result = pipeline.beta_commit()
    # `dvc status` lists the stages whose *own* deps changed: only dpo (its `dpo` params group).
    # evaluate is stale only through dpo's outputs, which DVC cannot know before dpo has rerun.
    assert set(result["status"]) == {"dpo"}, result["status"]
    assert result["status"]["dpo"] == [{"changed deps": {"params.yaml": {"dpo": "modified"}}}]
    assert downstream(pipeline.repo, "dpo") == {"dpo"} | EVALUATION
    repro = result["repro"]
    assert stages_run(repro) == {"dpo"} | EVALUATION, output(repro)
    for stage in ("prepare", "sft", "reward", "reference"):
        assert f"Stage '{stage}' didn't change, skipping" in repro.stdout, output(repro)
    assert read_params(pipeline.repo)["dpo"]["beta"] == 0.2
    assert_clean(pipeline.repo)


@pytest.mark.parametrize("path, reruns", [("stages/preftune/train/losses.py", {"dpo"}),
                                          ("stages/preftune/data/task.py", {"prepare"}),
                                          ("stages/preftune/data/gold.py", {"sft", "reward", "evaluate"}),
                                          ("stages/preftune/judging/judges.py", {"judge"}),
                                          ("stages/preftune/train/loop.py", {"sft", "reward", "dpo"}),
                                          ("stages/preftune/model/adapters.py", {"dpo"}),
                                          ("stages/preftune/judging/win_rates.py", {"evaluate"})])
def test_a_code_edit_reruns_only_the_stages_that_import_it(pipeline, path, reruns):
    """Editing the DPO losses must not recompute the reference log-probs (that stage exists to be reused), and
    editing the task generator must not retrain anything whose inputs it does not change."""
    repo = pipeline.repo
    assert_git_clean(repo)
    with open(repo / path, "a", encoding="utf-8") as f:
        f.write("# an edit\n")
    try:
        dry = dvc("repro", "--dry", cwd=repo)
        assert stages_run(dry) == reruns, output(dry)
    finally:
        git("checkout", "--", path, cwd=repo)
    assert_clean(repo)


def test_metrics_and_params_diff_across_commits(pipeline):
    repo = pipeline.repo
    new = pipeline.beta_commit()["commit"]
    old = pipeline.first_commit

    params = json.loads(dvc("params", "diff", old, new, "--json", cwd=repo).stdout)
    assert params == {"params.yaml": {"dpo.beta": {"old": 0.1, "new": 0.2, "diff": pytest.approx(0.1)}}}

    metrics = json.loads(dvc("metrics", "diff", old, new, "--json", cwd=repo).stdout)
    dpo = metrics.get("metrics/dpo/metrics.json", {})
    # beta scales the implicit rewards beta * log(pi / pi_ref) directly
    for key in ("train.implicit_r_w", "train.implicit_r_l", "heldout.implicit_r_w", "train.loss"):
        assert key in dpo, metrics
        assert dpo[key]["old"] != dpo[key]["new"], metrics
    # nothing upstream of dpo reran, so their metrics are identical
    for path in ("metrics/prepare.json", "metrics/sft/metrics.json", "metrics/reward/metrics.json"):
        assert path not in metrics, metrics


def test_selective_rerun_reward_lr(pipeline):
    repo = pipeline.repo
    assert_git_clean(repo)
    old_lr = read_params(repo)["reward"]["lr"]
    edit_params(repo, reward={"lr": old_lr * 3})
    try:
        status = status_json(repo)
        # As for dpo.beta: status names the directly changed stage; evaluate follows via models/reward.
        assert set(status) == {"reward"}, status
        assert status["reward"] == [{"changed deps": {"params.yaml": {"reward": "modified"}}}]
        assert downstream(repo, "reward") == {"reward", "judge", "evaluate"}
    finally:
        git("checkout", "--", "params.yaml", cwd=repo)
    assert_clean(repo)


def test_changing_the_judge_reruns_only_judging(pipeline, tmp_path):
    """evaluate.judge -> a judge LLM behind a real OpenAI-compatible server (tests/chat_server.py, answering "A"
    whatever it is shown): `dvc repro` reruns judge and evaluate only, the answers are generate's as before, and
    eval.json shows the judge for what it is: every verdict flipped with the order, so position consistency 0 and
    every comparison a tie."""
    repo = pipeline.repo
    assert_git_clean(repo)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "chat_server.py"), "--port", str(port),
                               "--key", "k", "--reply", "A"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server)
        before = json.loads((repo / "metrics" / "eval.json").read_text())
        edit_params(repo, evaluate={"judge": "openai:test-judge", "judge_base_url": f"http://127.0.0.1:{port}/v1"})
        assert set(status_json(repo)) == {"judge"}  # evaluate follows through data/judgments
        assert downstream(repo, "judge") == {"judge", "evaluate"}
        repro = dvc("repro", cwd=repo, env={**ENV, "OPENAI_API_KEY": "k"})
        assert stages_run(repro) == {"judge", "evaluate"}, output(repro)
        after = json.loads((repo / "metrics" / "eval.json").read_text())
        assert after["judge"] == "openai:test-judge" and after["judge_position_consistency"] == 0.0
        assert (after["wins"], after["losses"], after["ties"]) == (0, 0, after["n"]) and after["win_rate"] == 0.0
        assert after["judge_unparseable"] == 0 and after["win_rate_informative"] is False
        asked = [json.loads(line) for name in ("heldout", "validation", "gold", "pairs_heldout", "pairs_fresh")
                 for line in (repo / "data" / "judgments" / f"{name}.jsonl").open()]
        assert after["judge_calls"] == 2 * sum("readings" in r for r in asked)  # both orders; identical: not asked
        for key in ("kl_dpo_sft", "gold_accuracy_dpo", "gold_accuracy_sft", "answer_words_dpo"):  # generate's
            assert after[key] == before[key], key
    finally:
        server.kill()
        server.wait()
        git("checkout", "--", "params.yaml", cwd=repo)
    dvc("repro", cwd=repo)
    assert_clean(repo)


def test_experiment(pipeline):
    repo = pipeline.repo
    pipeline.beta_commit()
    assert_git_clean(repo)  # experiments run in the workspace
    run = dvc("exp", "run", "-S", "dpo.beta=0.3", cwd=repo)
    try:
        assert stages_run(run) == {"dpo"} | EVALUATION, output(run)
        assert "Ran experiment(s)" in run.stdout, output(run)

        shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
        experiments = [rev for baseline in shown if baseline["rev"] != "workspace"
                       for exp in (baseline.get("experiments") or []) for rev in exp["revs"]]
        matching = [rev for rev in experiments
                    if rev["data"]["params"]["params.yaml"]["data"]["dpo"]["beta"] == 0.3]
        assert len(matching) == 1, shown
        evaluation = matching[0]["data"]["metrics"]["metrics/eval.json"]["data"]
        assert isinstance(evaluation["win_rate"], float) and 0.0 <= evaluation["win_rate"] <= 1.0
    finally:
        # `exp run` leaves its result in the workspace: back to HEAD for the tests that follow
        git("checkout", "--", ".", cwd=repo)
        dvc("checkout", cwd=repo)
        dvc("exp", "remove", "--all-commits", cwd=repo)
    assert_clean(repo)


def test_remote_push_pull_and_run_cache(pipeline):
    repo, base = pipeline.repo, pipeline.base
    beta_commit = pipeline.beta_commit()["commit"]
    assert_git_clean(repo)

    # 1. push HEAD's outputs; a fresh clone pulls them and is up to date without running anything
    dvc("push", cwd=repo)
    pulled = base / "pulled"
    git("clone", "-q", str(repo), str(pulled), cwd=base)
    dvc("pull", cwd=pulled)
    assert_clean(pulled)
    repro = dvc("repro", cwd=pulled)
    assert "Running stage" not in repro.stdout + repro.stderr, output(repro)
    assert (pulled / "models" / "dpo").is_dir()

    # 2. the run-cache: in DVC 3 `push --run-cache` uploads only the run records (.dvc/cache/runs), not
    # the outputs they point to; the dpo.beta=0.1 outputs belong to the first commit, so push all commits.
    push = dvc("push", "--all-commits", "--run-cache", cwd=repo)
    assert (pipeline.remote / "runs").is_dir(), output(push)

    fresh = base / "fresh"
    git("clone", "-q", str(repo), str(fresh), cwd=base)
    git("checkout", "-q", beta_commit, cwd=fresh)
    edit_params(fresh, dpo={"beta": 0.1})  # a value that already ran (first commit)
    repro = dvc("repro", "--pull", cwd=fresh)
    text = repro.stdout + repro.stderr
    assert "Stage 'dpo' is cached - skipping run" in text, output(repro)
    assert "Running stage 'dpo'" not in text and "> python stages/dpo.py" not in text, output(repro)
    for stage in ("prepare", "sft", "reward", "reference"):
        assert f"Running stage '{stage}'" not in text, output(repro)
    # evaluate keeps its outputs in git with `cache: false`, so DVC never saves it to the run-cache
    # (a stage with any uncached non-metric output is skipped) and it reruns here: that is by design,
    # no assertion about it.

    # the restored dpo outputs are exactly those of the first run
    first_lock = git("show", f"{pipeline.first_commit}:dvc.lock", cwd=repo).stdout
    assert lock_outs((fresh / "dvc.lock").read_text(), "dpo") == lock_outs(first_lock, "dpo")
    assert status_json(fresh) == {}


def test_user_dataset_in_data_raw_is_a_dependency(pipeline):
    """The promise for a user's own data: a dataset under data/raw/ (here `dvc add`ed) feeds prepare, and
    appending one row makes `dvc status` report prepare and `dvc repro` rerun it and everything it feeds."""
    base = pipeline.base
    repo = base / "userdata"
    git("clone", "-q", str(pipeline.repo), str(repo), cwd=base)
    rows = [{"prompt": f"Fix the grammar: {who} {verb} home.\nAnswer:", "chosen": f" {who} {good} home.",
             "rejected": f" {who} {verb} home."}
            for who in ("She", "He", "It", "Anna", "Omar", "The dog", "My friend", "Our teacher")
            for verb, good in (("go", "goes"), ("walk", "walks"), ("run", "runs"), ("drive", "drives"))]
    raw = repo / "data" / "raw" / "prefs.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]), encoding="utf-8")
    dvc("add", "data/raw/prefs.jsonl", cwd=repo)
    edit_params(repo, data={"source": "data/raw/prefs.jsonl", "heldout": 6})
    first = dvc("repro", cwd=repo)
    assert stages_run(first) == set(STAGES), output(first)
    assert json.loads((repo / "metrics" / "prepare.json").read_text())["pairs"] == {"train": 25, "heldout": 6}
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "user dataset", cwd=repo)
    assert_clean(repo)

    with open(raw, "a", encoding="utf-8") as f:
        f.write(json.dumps(rows[-1]) + "\n")
    status = status_json(repo)
    assert {"changed deps": {"data/raw": "modified"}} in status["prepare"], status
    dvc("add", "data/raw/prefs.jsonl", cwd=repo)  # record the new version, as a user does after an edit
    again = dvc("repro", cwd=repo)
    assert stages_run(again) == set(STAGES), output(again)  # a new pair: new tokenizer, new everything
    assert json.loads((repo / "metrics" / "prepare.json").read_text())["pairs"] == {"train": 26, "heldout": 6}
    assert status_json(repo) == {}


# --- the plots page in a browser, offline ---------------------------------------------------------------------

SCREENSHOTS = ROOT / "tests" / "screenshots"  # git-ignored: for a person to look at after the run
PLOT_REVS = {"beta-0.1": "first_commit", "beta-0.2": "beta_commit"}


def require_chromium() -> None:
    require(find_chromium() is not None, "chromium is not installed (Debian: apt-get install chromium)")


def plots_page(repo: Path, out: Path, *args: str) -> Path:
    """`dvc plots <args> -o out` and the page it wrote."""
    proc = dvc("plots", *args, "-o", str(out), cwd=repo)
    page = out / "index.html"
    assert page.is_file(), output(proc)
    return page


def assert_every_chart_drew(repo: Path, page: Path, expected_revs: set[str]) -> dict:
    """Every plot dvc.yaml declares is on the page, drawn offline: an SVG with marks from each revision."""
    charts, images = declared_plots(repo / "dvc.yaml")
    ids = set(charts) | {div_id(path) for path in images}
    drawn = charts_in(dump_dom(page), ids)
    for plot_id, props in charts.items():
        chart = drawn[plot_id]
        assert chart.embed == "ok", f"{plot_id}: the chart did not render in {page} (data-embed={chart.embed!r})"
        assert chart.svg and chart.marks, f"{plot_id}: no SVG marks drawn in {page}"
        assert props["title"] in chart.texts, f"{plot_id}: title {props['title']!r} not drawn; texts: {chart.texts}"
        assert revs(chart) == expected_revs, f"{plot_id}: marks of revisions {revs(chart)}, expected {expected_revs}"
    for path in images:
        chart = drawn[div_id(path)]
        assert len(chart.images) == len(expected_revs), f"{path}: {chart.images} in {page}"
        for src in chart.images:
            assert (page.parent / src).stat().st_size > 0, f"{path}: {src} missing next to {page}"
    return drawn


def tag_plot_revs(pipeline: Pipeline) -> None:
    pipeline.beta_commit()
    for tag, attr in PLOT_REVS.items():
        commit = pipeline.first_commit if attr == "first_commit" else pipeline.beta_commit()["commit"]
        git("tag", "-f", tag, commit, cwd=pipeline.repo)


def test_plots_show_offline_in_chromium(pipeline, tmp_path):
    require_chromium()
    repo = pipeline.repo
    page = plots_page(repo, tmp_path / "show", "show")
    html = page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src=" not in html, "the page still loads scripts from the web"
    assert_every_chart_drew(repo, page, {"workspace"})
    screenshot(page, SCREENSHOTS / "plots_show.png")

    # The same page with DVC's default template, which loads Vega from a CDN, draws nothing here: the browser
    # really has no network, so the charts above drew from the inlined libraries.
    from dvc_render.html import PAGE_HTML
    default_template = tmp_path / "default_template.html"
    default_template.write_text(PAGE_HTML, encoding="utf-8")
    cdn_page = plots_page(repo, tmp_path / "cdn", "show", "--html-template", str(default_template))
    assert "cdn.jsdelivr.net" in cdn_page.read_text(encoding="utf-8")
    charts, _ = declared_plots(repo / "dvc.yaml")
    drawn = charts_in(dump_dom(cdn_page), set(charts))
    assert not any(c.svg or c.marks for c in drawn.values()), "a CDN page drew charts: is the network really off?"


def test_plots_diff_two_betas_in_chromium(pipeline, tmp_path):
    require_chromium()
    repo = pipeline.repo
    tag_plot_revs(pipeline)
    page = plots_page(repo, tmp_path / "diff", "diff", *PLOT_REVS)
    drawn = assert_every_chart_drew(repo, page, set(PLOT_REVS))
    # one chart overlays both runs' DPO curves: train and held-out for each beta
    lines = [m for m in drawn["dpo_loss"].marks if m["mark"] == "line"]
    assert {(r, f) for m in lines for r in field_values(m, "rev") for f in field_values(m, "filename")} == \
        {(rev, split) for rev in PLOT_REVS for split in ("train/loss.tsv", "heldout/loss.tsv")}, lines
    screenshot(page, SCREENSHOTS / "plots_diff_betas.png")


def test_plots_diff_two_experiments_in_chromium(pipeline, tmp_path):
    require_chromium()
    repo = pipeline.repo
    pipeline.beta_commit()
    assert_git_clean(repo)
    names = {"exp-beta-0.05": 0.05, "exp-beta-0.5": 0.5}
    try:
        for name, beta in names.items():
            run = dvc("exp", "run", "-n", name, "-S", f"dpo.beta={beta}", cwd=repo)
            assert stages_run(run) == {"dpo"} | EVALUATION, output(run)
            git("checkout", "--", ".", cwd=repo)
            dvc("checkout", cwd=repo)
        page = plots_page(repo, tmp_path / "exp", "diff", *names)
        drawn = assert_every_chart_drew(repo, page, set(names))
        frontier = drawn["frontier_reward"].marks
        assert sorted(r for m in frontier for r in field_values(m, "rev")) == sorted(names), frontier
    finally:
        git("checkout", "--", ".", cwd=repo)
        dvc("checkout", cwd=repo)
        dvc("exp", "remove", "--all-commits", cwd=repo)
    assert_clean(repo)



def test_a_reference_file_made_from_other_data_is_one_line(pipeline):
    """data/reference out of step with data/prepared (a manual edit, a half-finished checkout): dpo says which
    file and what to run, exits 2, and writes nothing."""
    repo = pipeline.repo
    assert_git_clean(repo)
    reference = repo / "data" / "reference" / "logps.safetensors"
    save_file({k: v[:-1].contiguous() for k, v in load_file(str(reference)).items()}, str(reference))
    before = (repo / "models" / "dpo" / "model.safetensors").read_bytes()
    try:
        proc = subprocess.run([sys.executable, "stages/dpo.py"], cwd=repo, env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2, output(proc)
        assert len(proc.stderr.splitlines()) == 1, output(proc)
        assert proc.stderr.startswith("dpo: error: data/reference/logps.safetensors: made from other data"), output(proc)
        assert "`dvc checkout` or `dvc repro`" in proc.stderr
        assert (repo / "models" / "dpo" / "model.safetensors").read_bytes() == before
    finally:
        dvc("checkout", "--force", "data/reference", cwd=repo)
    assert_clean(repo)
