"""`nasflow report --out`: the HTML page from real runs, loaded in a real headless Chromium.

Two real runs share one registry: the tiny spec through every stage (evolution search, train,
morph, onnx deploy, a LUT per device) and a DARTS supernet search (its per-epoch distribution).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_spec_text
from test_cli import assert_clean_error, nasflow
from test_search_darts import darts_spec

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI installs Chromium and playwright (`.ci/run`): there a missing browser fails instead of skipping
REQUIRE_BROWSER = os.environ.get("NASFLOW_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from nasflow.flows.pipeline import run_spec
    from nasflow.spec import LoadedSpec, parse_spec

    tmp = tmp_path_factory.mktemp("report")
    tiny = tiny_spec_text(tmp, name="report").replace("profile: {enabled: true}", "profile: {enabled: true, lut: true}")
    darts = darts_spec(tmp)
    ids = {}
    for name, text in (("tiny", tiny), ("darts", darts)):
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        ids[name] = run_spec(LoadedSpec(parse_spec(text), path, text)).run_id
    return tmp, tmp / "registry.duckdb", ids


def report(capsys, *args) -> subprocess.CompletedProcess:
    """`nasflow report ARGS` in this process (the command line itself is tested with a subprocess
    in test_cli); what it printed, as a finished process would show it."""
    from nasflow.cli import main

    code = main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["nasflow", "report", *args], code, out, err)


def _page(registry_path, *run_ids):
    from nasflow.registry import open_readonly
    from nasflow.report import compare_page, load_run, run_page

    registry = open_readonly(registry_path)
    loaded = [load_run(registry, r) for r in run_ids]
    return loaded, (run_page(loaded[0]) if len(loaded) == 1 else compare_page(loaded))


def _values(chart_dict) -> list[dict]:
    """Every inline data row of a (layered or faceted) Vega-Lite spec."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("data"), dict) and "values" in node["data"]:
                found.extend(node["data"]["values"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(chart_dict)
    return found


def test_run_page_shows_the_registry_numbers_with_their_sources(runs):
    from nasflow.flows.pipeline import candidate_table
    from nasflow.objectives import pareto_front
    from nasflow.registry import open_readonly

    _, registry_path, ids = runs
    [run], page = _page(registry_path, ids["tiny"])
    plots = {p.key: p.chart.to_dict() for p in page.plots}
    assert {"front-torch-cpu", "front-onnxruntime-cpu", "progress", "layers-torch-cpu", "morph"} <= set(plots)

    registry = open_readonly(registry_path)
    table = candidate_table(registry, ids["tiny"], "torch-cpu", ["torch-cpu", "onnxruntime-cpu"])
    values = _values(plots["front-torch-cpu"])
    assert {v["candidate_id"] for v in values} == {r["candidate_id"] for r in table}
    front = {v["candidate_id"] for v in values if v.get("on_front")}
    assert front == {r["candidate_id"] for r in pareto_front(table)}
    assert {v["latency_source"] for v in values} == {"measured"}
    assert {v["accuracy_source"] for v in values} == {"proxy", "full"}

    # the chosen model is the deployed one; its blocks carry the LUT's numbers where the LUT has them
    artifact = registry.get_artifacts(ids["tiny"])[0]
    assert run.chosen["candidate_id"] == artifact["candidate_id"] and run.chosen_why == "deployed as onnx"
    layers = run.layers["torch-cpu"]
    assert [layer.position for layer in layers] == list(range(len(layers)))
    _, lut = registry.query("SELECT op_key, median_ms FROM lut WHERE device = 'torch-cpu'")
    lut_ms = dict(lut)
    assert all(layer.lut_ms in lut_ms.values() for layer in layers if layer.in_lut and layer.lut_ms is not None)
    # the morphed width is outside the profiled space: drawn, and said to be without a latency
    assert any(not layer.in_lut for layer in layers) == ("not in the LUT" in run.lut_notes.get("torch-cpu", ""))

    morph = _values(plots["morph"])
    child = next(c for c in registry.get_candidates(ids["tiny"], stage="morph"))
    assert {(v["role"], v["macs"]) for v in morph} >= {("child", child["macs"])}
    progress = _values(plots["progress"])
    assert [v["evaluated"] for v in progress] == list(range(1, len(registry.get_candidates(ids["tiny"], "search")) + 1))
    best = [v["best_score"] for v in progress if v["best_score"] is not None]
    assert best == sorted(best), "best score so far never goes down"


def test_one_shot_run_shows_the_architecture_distribution_per_epoch(runs):
    from nasflow.report.charts import distribution_rows

    _, registry_path, ids = runs
    [run], page = _page(registry_path, ids["darts"])
    assert {"distribution", "search-log"} <= {p.key for p in page.plots}
    rows = distribution_rows(run)
    decisions = {r["metric"][len("choice."):] for r in run.search_log if r["metric"].startswith("choice.")}
    assert {r["step"] for r in rows} == {1, 2} and {r["decision"] for r in rows} == decisions
    for r in rows:
        weights = [float(w.rsplit(" ", 1)[1]) for w in r["weights"].split(", ")]
        assert r["weight"] == pytest.approx(max(weights), abs=0.005) and sum(weights) == pytest.approx(1, abs=0.02)


def test_compare_overlays_the_runs_fronts(runs):
    _, registry_path, ids = runs
    loaded, page = _page(registry_path, ids["tiny"], ids["darts"])
    values = _values(next(p for p in page.plots if p.key == "front-torch-cpu").chart.to_dict())
    assert {v["run_id"] for v in values} == {ids["tiny"], ids["darts"]}
    assert {v["run_id"] for v in values if v.get("on_front")} == {ids["tiny"], ids["darts"]}


def _browser():
    if not Path(CHROMIUM).exists():
        if REQUIRE_BROWSER:
            pytest.fail(f"NASFLOW_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
        pytest.skip("no Chromium (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRE_BROWSER:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    return sync_playwright


def _not_blank(png: Path) -> None:
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 200).mean() > 0.01, f"{png} looks blank"


@pytest.mark.parametrize("which", ["run", "compare"])
def test_page_renders_offline_in_headless_chromium(runs, which, capsys):
    sync_playwright = _browser()
    tmp, registry_path, ids = runs
    out = tmp / f"{which}.html"
    extra = ["--compare", ids["darts"]] if which == "compare" else []
    result = report(capsys, ids["tiny"], *extra, "--registry", registry_path, "--out", out)
    assert result.returncode == 0, result.stderr
    count = int(re.search(r"\((\d+) plots\)", result.stdout).group(1))
    text = out.read_text()
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.DOTALL)  # the inlined libraries' own strings aside
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", markup), "the page must load nothing from elsewhere"

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems, requests = [], []
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.plot .role-mark').length >= {count}", timeout=30_000)
            marks = page.evaluate(
                "Array.from(document.querySelectorAll('.plot')).map(d => "
                "Array.from(d.querySelectorAll('.role-mark')).reduce((n, g) => n + g.childElementCount, 0))")
            shot = tmp / f"{which}.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert requests == [out.as_uri()], "nothing but the page itself is fetched"
    assert len(marks) == count and all(n > 0 for n in marks), marks
    _not_blank(shot)


def test_png_export_writes_one_picture_per_plot(runs):
    tmp, registry_path, ids = runs
    out = tmp / "paper" / "report.html"
    out.parent.mkdir()
    result = nasflow("report", ids["tiny"], "--registry", registry_path, "--out", out, "--png")
    assert result.returncode == 0, result.stderr
    pngs = sorted(out.parent.glob("report-*.png"))
    count = int(re.search(r"\((\d+) plots\)", result.stdout).group(1))
    assert len(pngs) == count >= 5
    for png in pngs:
        _not_blank(png)


def test_report_out_bad_input_is_one_error_and_nothing_is_written(runs, tmp_path, capsys):
    _, registry_path, ids = runs
    run = ids["tiny"]
    assert_clean_error(report(capsys, run, "--registry", registry_path, "--out", tmp_path),
                       "is a folder; give a file name")
    assert_clean_error(report(capsys, run, "--registry", registry_path, "--out", tmp_path / "no" / "r.html"),
                       "does not exist")
    assert_clean_error(report(capsys, run, "--registry", registry_path, "--png"), "give --out FILE.html")
    assert_clean_error(report(capsys, run, "--registry", registry_path, "--compare", "nope", "--out", tmp_path / "r.html"),
                       "no run 'nope'", run)
    assert not (tmp_path / "r.html").exists()
    # a folder the kernel refuses files in (even to root): the error names the file
    assert_clean_error(report(capsys, run, "--registry", registry_path, "--out", "/proc/nasflow-report.html"),
                       "cannot write /proc/nasflow-report.html")
    assert list(tmp_path.iterdir()) == [], "no page and no temporary file is left behind"


def test_terminal_report_without_out_is_unchanged(runs, capsys):
    _, registry_path, ids = runs
    result = report(capsys, ids["tiny"], "--registry", registry_path)
    assert result.returncode == 0, result.stderr
    assert f"run {ids['tiny']} (finished): Pareto front" in result.stdout and "<html" not in result.stdout
