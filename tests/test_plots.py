"""The offline plots page template and the plot declarations, without running the pipeline or a browser
(tests/test_pipeline_e2e.py opens the real pages in Chromium)."""

import csv
import importlib.util
import json
import re
from pathlib import Path

import yaml
from configobj import ConfigObj

from preftune.judging import plots

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
BUILT_IN_TEMPLATES = {"linear", "simple", "scatter", "scatter_jitter", "smooth", "confusion", "confusion_normalized",
                      "bar_horizontal", "bar_horizontal_sorted"}


def load_builder():
    spec = importlib.util.spec_from_file_location("build_offline_template", ROOT / "plots" / "build_offline_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def template_path() -> Path:
    # DVC resolves a relative plots.html_template against the .dvc directory (dvc/commands/plots.py)
    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    return (ROOT / ".dvc" / config["plots"]["html_template"]).resolve()


def test_dvc_config_sets_the_committed_offline_template():
    path = template_path()
    assert path == ROOT / "plots" / "offline.html"
    html = path.read_text(encoding="utf-8")
    assert "{plot_divs}" in html
    assert "{scripts}" not in html, "dvc_render fills {scripts} with CDN <script> tags"
    markup = re.sub(r"<script>.*?</script>", "<script></script>", html, flags=re.S)  # the HTML around the JS
    assert not re.search(r"\s(src|href)=", markup), "the template loads something from outside the page"


def test_template_inlines_each_pinned_library_with_its_license():
    builder = load_builder()
    html = template_path().read_text(encoding="utf-8")
    assert html.count("<script>") == len(builder.PINS) + 1  # the libraries + the vegaEmbed wrapper
    for name, (version, integrity) in builder.PINS.items():
        header = re.search(rf"/\*! {re.escape(name)}@{re.escape(version)} from the npm registry "
                           rf"\({re.escape(integrity)}\); BSD-3-Clause, see plots/vendor/(\S+) \*/", html)
        assert header, f"{name}@{version} is not inlined in {template_path()}"
        license_text = (ROOT / "plots" / "vendor" / header.group(1)).read_text()
        assert "Redistribution and use in source and binary forms" in license_text, header.group(1)


def test_every_chart_has_a_title_axes_and_data_an_output_declares():
    outs = [next(iter(o)) if isinstance(o, dict) else o
            for stage in DVC_YAML["stages"].values() for o in stage.get("outs", []) + stage.get("metrics", [])]
    charts = [entry for entry in DVC_YAML["plots"] if isinstance(entry, dict)]
    assert len(charts) >= 11
    for entry in charts:
        (plot_id, props), = entry.items()
        for key in ("title", "x", "x_label", "y_label", "y"):
            assert key in props, f"plot {plot_id}: no {key}"
        template = props.get("template", "linear")
        assert template in BUILT_IN_TEMPLATES or (ROOT / ".dvc" / "plots" / f"{template}.json").is_file(), plot_id
        for data_file in props["y"]:
            assert any(data_file == out or data_file.startswith(out.rstrip("/") + "/") for out in outs), \
                f"plot {plot_id}: {data_file} is not inside any stage's outs, so `dvc plots diff` cannot find it"
    images = [entry for entry in DVC_YAML["plots"] if isinstance(entry, str)]
    assert images == ["metrics/plots/reward_distributions.png"]  # the one figure with no chart equivalent


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_plot_data_for_win_tie_loss_and_frontier(tmp_path):
    metrics = {"wins": 14, "ties": 36, "losses": 0, "n": 50, "win_rate": 0.28, "win_rate_ties_half": 0.64,
               "lc_win_rate": 0.61, "kl_dpo_sft": 0.190858, "reward_mean_dpo": 0.745247, "reward_mean_sft": 0.156319,
               "gold_n": 500, "gold_win_rate": 0.202, "gold_loss_rate": 0.02,
               "gold_accuracy_dpo": 0.478, "gold_accuracy_sft": 0.296, "win_rate_informative": False}
    plots.write_plot_data(metrics, tmp_path)
    judge = read_csv(tmp_path / "judge_win_tie_loss.csv")
    assert [(r["outcome"], float(r["share"]), int(r["count"])) for r in judge] == \
        [("DPO wins", 0.28, 14), ("tie", 0.72, 36), ("SFT wins", 0.0, 0)]
    gold = read_csv(tmp_path / "gold_win_tie_loss.csv")
    assert [(r["outcome"], float(r["share"]), int(r["count"])) for r in gold] == \
        [("DPO wins", 0.202, 101), ("tie", 0.778, 389), ("SFT wins", 0.02, 10)]
    frontier = json.loads((tmp_path / "frontier.json").read_text())
    assert frontier == [{"kl_dpo_sft": 0.190858, "reward_mean_dpo": 0.745247, "reward_mean_sft": 0.156319,
                         "win_rate": 0.28, "win_rate_ties_half": 0.64, "lc_win_rate": 0.61,
                         "win_rate_informative": False,
                         "gold_accuracy_dpo": 0.478, "gold_accuracy_sft": 0.296}]


def test_plot_data_without_a_gold_checker(tmp_path):
    metrics = {"wins": 1, "ties": 0, "losses": 3, "n": 4, "win_rate": 0.25, "win_rate_ties_half": 0.25,
               "lc_win_rate": 0.2, "kl_dpo_sft": 0.5, "reward_mean_dpo": 0.1, "reward_mean_sft": 0.2}
    plots.write_plot_data(metrics, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontier.json", "judge_win_tie_loss.csv"]
    assert "gold_accuracy_dpo" not in json.loads((tmp_path / "frontier.json").read_text())[0]
