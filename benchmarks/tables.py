"""README blocks of the benchmarks, rendered from their committed JSON: the one place for their format.

Each benchmark script `benchmarks/<name>.py` writes `benchmarks/results/<name>.json` and has a
`markdown(report) -> str` function; `python benchmarks/<name>.py --markdown` prints it without
running anything. In README.md that text sits between two markers naming the script, and
tests/test_readme_tables.py fails when it differs from the rendering. After re-running a
benchmark (and committing its JSON), refresh the README with::

    .venv/bin/python benchmarks/tables.py --update-readme
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
README = ROOT / "README.md"

_BEGIN = "<!-- rendered by `python benchmarks/{name}.py --markdown` from benchmarks/results/{name}.json: do not edit -->"
_END = "<!-- end of benchmarks/{name}.py --markdown -->"
_BLOCK = re.compile(
    r"<!-- rendered by `python benchmarks/(?P<name>[\w-]+)\.py --markdown` from [^\n]*-->\n(?P<body>.*?)\n"
    r"<!-- end of benchmarks/(?P=name)\.py --markdown -->",
    re.S,
)


def results_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def load_results(name: str, path: Path | None = None) -> dict[str, Any]:
    """The committed report of benchmark `name` (or the one at `path`)."""
    return json.loads((path or results_path(name)).read_text())


def benchmark_names() -> list[str]:
    """Every benchmark with a committed JSON report (a setting's report, below, is its script's)."""
    stems = sorted(p.stem for p in RESULTS.glob("*.json"))
    return [s for s in stems if not any(s.startswith(f"{o}_") and (BENCHMARKS / f"{o}.py").is_file() for o in stems)]


def setting_reports(name: str) -> dict[str, dict[str, Any]]:
    """{setting: report} of benchmark `name`'s other settings: `results/<name>_<setting>.json`,
    rendered inside its README block by its script."""
    return {p.stem[len(name) + 1:]: json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_*.json"))}


# ------------------------------------------------------------------------------------ formatting


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table in the README's style: `| a | b |`, a `|---|` rule, cells as given."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float, digits: int = 1) -> str:
    """`value` with `digits` decimals and thousands separators: 17,700 or 20.8."""
    return f"{value:,.{digits}f}"


def percent(share: float, digits: int = 1) -> str:
    """A share (0-1) as a percentage: 0.975 -> '97.5 %'."""
    return f"{100 * share:.{digits}f} %"


def signed_percent(share: float, digits: int = 1) -> str:
    """A relative error (share) with its sign: -0.023 -> '-2.3 %'."""
    return f"{100 * share:+.{digits}f} %"


def significant(value: float, digits: int = 3) -> str:
    """`value` with `digits` significant figures, no exponent: 0.0230, 2.57, 133."""
    if value == 0:
        return "0"
    from math import floor, log10

    decimals = max(digits - 1 - floor(log10(abs(value))), 0)
    return f"{value:.{decimals}f}"


def paragraph(*sentences: str) -> str:
    """Sentences joined into one paragraph (the README wraps nothing by itself)."""
    return " ".join(s.strip() for s in sentences if s and s.strip())


def blocks(*parts: str) -> str:
    """Paragraphs and tables separated by blank lines."""
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip())


# ------------------------------------------------------------------------------------ the README


def wrap(name: str, body: str) -> str:
    return f"{_BEGIN.format(name=name)}\n{body.strip()}\n{_END.format(name=name)}"


def readme_blocks(text: str) -> dict[str, str]:
    """{benchmark name: rendered text} of every marked block in README text."""
    found: dict[str, str] = {}
    for match in _BLOCK.finditer(text):
        if match["name"] in found:
            raise ValueError(f"README.md has two blocks for benchmarks/{match['name']}.py")
        found[match["name"]] = match["body"]
    return found


def render(name: str, path: Path | None = None) -> str:
    """What `python benchmarks/<name>.py --markdown` prints."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module(name)
    return module.markdown(load_results(name, path)).strip()


def add_markdown_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown", action="store_true",
        help="print this benchmark's README block from its JSON (--out, default the committed one) and exit; runs nothing",
    )


def print_markdown(name: str, markdown, path: Path) -> int:
    """`--markdown`: print the block rendered from the report at `path`."""
    print(markdown(load_results(name, path)).strip())
    return 0


def update_readme(names: Iterable[str] | None = None) -> list[str]:
    """Replace README.md's block of each benchmark with its rendering; returns the names changed."""
    text = README.read_text()
    wanted = list(names or benchmark_names())
    missing = sorted(set(wanted) - set(readme_blocks(text)))
    if missing:
        raise SystemExit(f"README.md has no block for {', '.join(missing)}: add its two marker lines first")
    changed = []

    def replace(match: re.Match) -> str:
        if match["name"] not in wanted:
            return match[0]
        body = render(match["name"])
        if match["body"].strip() != body:
            changed.append(match["name"])
        return wrap(match["name"], body)

    README.write_text(_BLOCK.sub(replace, text))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-readme", action="store_true", help="rewrite README.md's benchmark blocks from the JSON")
    parser.add_argument("names", nargs="*", help="benchmarks (default: every one with a JSON report)")
    args = parser.parse_args(argv)
    if args.update_readme:
        changed = update_readme(args.names or None)
        print(f"README.md: {', '.join(changed) if changed else 'already up to date'}")
        return 0
    for name in args.names or benchmark_names():
        print(wrap(name, render(name)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
