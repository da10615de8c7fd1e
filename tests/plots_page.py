"""Open a `dvc plots show` / `dvc plots diff` page in headless Chromium with the network unavailable, and
report what each chart drew. Used by the end-to-end tests (tests/test_pipeline_e2e.py) and, for the README's
screenshot, from the command line:

    python tests/plots_page.py <page.html> <screenshot.png>
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import yaml
from dvc_render.base import Renderer

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Headless, no first-run or background traffic, and no network at all: every host name fails to resolve and
# every request goes to a proxy on the discard port, where nothing listens.
OFFLINE_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
]
VIRTUAL_TIME_MS = 15000  # page time Chromium lets pass before it dumps: far more than Vega needs
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, *OFFLINE_FLAGS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={VIRTUAL_TIME_MS}", *args, page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode} on {page}:\n{proc.stderr[-2000:]}")
    return proc


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it."""
    return _chromium(page, "--dump-dom").stdout


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1900) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}", "--hide-scrollbars")
    if not png.is_file() or png.stat().st_size == 0:
        raise AssertionError(f"chromium wrote no screenshot to {png}")
    return png


class Chart:
    def __init__(self, chart_id: str):
        self.id = chart_id
        self.embed = ""                # the template's vegaEmbed wrapper: "ok" or "error"
        self.svg = False
        self.marks: list[dict] = []    # one per drawn mark: {"mark": "line", "label": aria-label}
        self.texts: list[str] = []
        self.images: list[str] = []


class _Parser(HTMLParser):
    """Walks the DOM, attributing each element to the chart <div id="..."> it sits in."""

    def __init__(self, ids: set[str]):
        super().__init__(convert_charrefs=True)
        self.charts = {i: Chart(i) for i in ids}
        self.stack: list[tuple[str, Chart | None, str | None]] = []  # (tag, chart, mark type of a role-mark group)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        chart, mark = (self.stack[-1][1], self.stack[-1][2]) if self.stack else (None, None)
        if tag == "div" and attrs.get("id") in self.charts:
            chart, mark = self.charts[attrs["id"]], None
            chart.embed = attrs.get("data-embed", "")
        if chart is not None:
            if tag == "svg":
                chart.svg = True
            elif tag == "img":
                chart.images.append(attrs.get("src", ""))
            elif tag == "g" and "role-mark" in (attrs.get("class") or "").split():
                mark = (attrs.get("class") or "").split()[0].removeprefix("mark-")
            elif mark and tag == "path" and (attrs.get("d") or "").startswith("M"):
                chart.marks.append({"mark": mark, "label": attrs.get("aria-label", "")})
        if tag not in VOID:
            self.stack.append((tag, chart, mark))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:  # tolerate unclosed elements
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self.stack and self.stack[-1][1] is not None and self.stack[-1][0] == "text" and data.strip():
            self.stack[-1][1].texts.append(data.strip())


def charts_in(dom: str, ids: set[str]) -> dict[str, Chart]:
    parser = _Parser(ids)
    parser.feed(dom)
    return parser.charts


def declared_plots(dvc_yaml: Path) -> tuple[dict[str, dict], list[str]]:
    """dvc.yaml's top-level plots: ({id: properties} of the Vega charts, [image paths])."""
    charts, images = {}, []
    for entry in yaml.safe_load(dvc_yaml.read_text())["plots"]:
        if isinstance(entry, str):
            images.append(entry)
        else:
            (plot_id, props), = entry.items()
            if Path(plot_id).suffix in (".png", ".jpg", ".jpeg", ".svg", ".gif"):
                images.append(plot_id)
            else:
                charts[plot_id] = props or {}
    return charts, images


def div_id(plot_name: str) -> str:
    """The id of the <div> DVC's renderer writes for a plot (dvc_render's own rule)."""
    return Renderer.remove_special_chars(plot_name)


def field_values(mark: dict, field: str) -> list[str]:
    """Values of one field in a drawn mark's aria-label, which Vega fills with every encoded field."""
    prefix = f"{field}: "
    return [part[len(prefix):] for part in mark["label"].split("; ") if part.startswith(prefix)]


def revs(chart: Chart) -> set[str]:
    """Revisions whose data the chart drew."""
    return {rev for mark in chart.marks for rev in field_values(mark, "rev")}

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/plots_page.py <page.html> <screenshot.png>")
    page, png = Path(sys.argv[1]), Path(sys.argv[2])
    dvc_yaml = Path(os.environ.get("DVC_YAML", "dvc.yaml"))
    charts = charts_in(dump_dom(page), set(declared_plots(dvc_yaml)[0]))
    for c in charts.values():
        print(f"{c.id}: embed={c.embed or '-'} svg={c.svg} marks={len(c.marks)} revs={sorted(revs(c))}")
    print(f"screenshot: {screenshot(page, png)}")
