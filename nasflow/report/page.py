"""The report as one self-contained HTML page (Vega, Vega-Lite and Vega-Embed inlined), and PNGs.

The page fetches nothing: the JavaScript comes from vl-convert's bundle and every chart carries its
data. Each plot's menu exports it as PNG or SVG; `write_pngs` writes them from the command line.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..console import fmt_number
from ..errors import NasflowError
from . import charts
from .data import RunData


@dataclass
class Plot:
    key: str  # file-name-safe id: the div's id and the PNG's suffix
    chart: object  # an Altair chart


@dataclass
class Section:
    heading: str
    intro: str = ""
    plots: list[Plot] = field(default_factory=list)
    body: str = ""  # extra HTML (tables, notes), already escaped


@dataclass
class Page:
    title: str
    subtitle: str
    sections: list[Section]

    @property
    def plots(self) -> list[Plot]:
        return [p for s in self.sections for p in s.plots]


def run_page(run: RunData) -> Page:
    """One run: fronts per device, search progress, the chosen model, morph history, artifacts."""
    sections = [Section("Run", body=_runs_table([run])),
                _fronts_section([run], run.devices),
                _progress_section([run])]
    sections.append(_chosen_section(run))
    morph = charts.morph_chart(run)
    if morph is not None:
        sections.append(Section("Morph history", "Each morph stage result against the network it was shrunk "
                                "(and expanded) from.", [Plot("morph", morph)]))
    sections.append(Section("Deployed artifacts", body=_artifacts_table(run)))
    return Page(f"nasflow report: {run.run_id}", run.label(), [s for s in sections if s.plots or s.body])


def compare_page(runs: list[RunData]) -> Page:
    """Several runs' fronts overlaid per device, and their search progress."""
    devices = list(dict.fromkeys(d for run in runs for d in run.devices))
    sections = [Section("Runs", body=_runs_table(runs)), _fronts_section(runs, devices), _progress_section(runs)]
    return Page(f"nasflow report: {len(runs)} runs compared", ", ".join(r.run_id for r in runs),
                [s for s in sections if s.plots or s.body])


def _fronts_section(runs: list[RunData], devices: list[str]) -> Section:
    plots = [Plot(f"front-{_slug(d)}", c) for d in devices if (c := charts.pareto_chart(runs, d)) is not None]
    intro = ("Every successful candidate with a latency on the device (hover for its numbers and where they "
             "came from); the line joins the Pareto front: no other candidate is both more accurate and faster.")
    if not plots:
        return Section("Accuracy and latency", body="<p class=note>No candidate has both an accuracy and a latency.</p>")
    return Section("Accuracy and latency", intro, plots)


def _progress_section(runs: list[RunData]) -> Section:
    section = Section("Search progress")
    progress = charts.progress_chart(runs)
    if progress is not None:
        section.plots.append(Plot("progress", progress))
    if len(runs) == 1:
        for key, chart in (("search-log", charts.search_log_chart(runs[0])),
                           ("distribution", charts.distribution_chart(runs[0]))):
            if chart is not None:
                section.plots.append(Plot(key, chart))
    if not section.plots:
        section.body = "<p class=note>The search logged nothing to plot (or the run had no search stage).</p>"
    return section


def _chosen_section(run: RunData) -> Section:
    if run.chosen is None:
        return Section("The chosen model", body=f"<p class=note>{html.escape(run.chosen_why)}.</p>")
    c = run.chosen
    body = (f"<p><code>{html.escape(c['arch'])}</code><br>{html.escape(run.chosen_why)}; stage {c['stage']}, "
            f"accuracy {fmt_number(c['accuracy'])} ({c.get('accuracy_source') or '?'}), test accuracy "
            f"{fmt_number(c.get('test_accuracy'))}, {fmt_number(c['params'])} params, {fmt_number(c['macs'])} MACs.</p>")
    body += "".join(f"<p class=note>{html.escape(d)}: {html.escape(why)}</p>"
                    for d, why in run.lut_notes.items())
    plots = [Plot(f"layers-{_slug(d)}", chart) for d in run.devices if (chart := charts.layers_chart(run, d)) is not None]
    return Section("The chosen model", "Each block's share of the latency, from the device's per-operator LUT.",
                   plots, body)


def _runs_table(runs: list[RunData]) -> str:
    rows = [[r.run_id, r.run["status"], r.spec.name, r.strategy, r.spec.space.name, ", ".join(r.devices),
             r.objective_device, len(r.candidates), r.run.get("train_device") or "-"] for r in runs]
    return _table(["run", "status", "spec", "strategy", "space", "devices", "objective device", "candidates",
                   "trained on"], rows)


def _artifacts_table(run: RunData) -> str:
    if not run.artifacts:
        return "<p class=note>Nothing was deployed.</p>"
    devices = list(dict.fromkeys(d for a in run.artifacts for d in a["latency"]))
    rows = []
    for a in run.artifacts:
        latencies = [f"{fmt_number(m['median_ms'])} ({m['source']})" if (m := a["latency"].get(d)) else "-" for d in devices]
        rows.append([a["format"], "yes" if a["verified"] else f"no: {a.get('failure') or '?'}",
                     fmt_number(a.get("accuracy")), fmt_number(a.get("reference_accuracy")),
                     fmt_number(a.get("top1_agreement")), fmt_number(a.get("max_abs_err")),
                     fmt_number(a.get("cosine_diff")), fmt_number(a["size_bytes"]), *latencies, a["path"]])
    return _table(["format", "verified", "test accuracy (artifact)", "test accuracy (PyTorch)", "top-1 agreement",
                   "max abs diff", "cosine diff", "bytes", *[f"{d} ms" for d in devices], "file"], rows)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-") or "x"


def _script_json(value) -> str:
    # inside <script>, "</" would end the element early
    return json.dumps(value).replace("</", "<\\/")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.1em; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } .note { color: #666; } code { word-break: break-all; }
.plot { margin: 1em 0; }
"""


def render_html(page: Page) -> str:
    """The page's HTML text, JavaScript libraries inlined."""
    import altair as alt
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=_vl_version(alt.SCHEMA_VERSION))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(page.title)}</title>",
             f"<style>{_STYLE}</style><script>{bundle}</script></head><body>",
             f"<h1>{html.escape(page.title)}</h1><p class=sub>{html.escape(page.subtitle)}<br>",
             f"nasflow {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>"]
    specs = {}
    for section in page.sections:
        parts.append(f"<section><h2>{html.escape(section.heading)}</h2>")
        if section.intro:
            parts.append(f"<p>{html.escape(section.intro)}</p>")
        parts.append(section.body)
        for plot in section.plots:
            parts.append(f"<div class=plot id='plot-{plot.key}'></div>")
            specs[plot.key] = plot.chart.to_dict()
        parts.append("</section>")
    parts.append(
        "<script>const specs = " + _script_json(specs) + ";\n"
        "for (const [key, spec] of Object.entries(specs)) {\n"
        "  vegaEmbed('#plot-' + key, spec, {actions: {export: true, source: false, compiled: false, editor: false},"
        " downloadFileName: key}).catch(err => console.error('plot ' + key + ': ' + err));\n"
        "}</script></body></html>"
    )
    return "".join(parts)


def write_report(page: Page, out: Path, png: bool = False) -> list[Path]:
    """Write the page (and with `png` one PNG per plot beside it); each file replaces an older one
    only once it is complete. Returns the paths written."""
    written = [_write_atomic(out, render_html(page).encode())]
    if png:
        import vl_convert

        for plot in page.plots:
            path = out.with_name(f"{out.stem}-{plot.key}.png")
            written.append(_write_atomic(path, vl_convert.vegalite_to_png(plot.chart.to_dict(), scale=2)))
    return written


def _write_atomic(path: Path, data: bytes) -> Path:
    try:
        return _replace_with(path, data)
    except OSError as error:  # an older file of that name is left as it was
        raise NasflowError(f"cannot write {path}: {error.strerror or error}") from None


def _replace_with(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the page is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _vl_version(schema_version: str) -> str:
    """'v6.4.1' -> '6.4' (the form vl-convert names its bundled Vega-Lite versions)."""
    major, minor = schema_version.lstrip("v").split(".")[:2]
    return f"{major}.{minor}"
