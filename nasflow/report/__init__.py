"""`nasflow report --out`: a run's results as one self-contained HTML page (and PNGs)."""

from .data import RunData, load_run
from .page import Page, compare_page, render_html, run_page, write_report

__all__ = ["Page", "RunData", "compare_page", "load_run", "render_html", "run_page", "write_report"]
