"""The `nasflow` command as a user meets it: real subprocesses, exit codes, one message, no tracebacks."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nasflow.registry import Registry, open_readonly

from conftest import tiny_spec_text

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

ROWS = [
    {"candidate_id": "cand-a", "run_id": "r1", "stage": "search", "arch": "stem_c8_s1-head_c32", "arch_hash": "h-a",
     "status": "ok", "params": 1234, "macs": 56789, "accuracy": 0.8125, "extra": {"genome": [1, 2]}},
    {"candidate_id": "cand-b", "run_id": "r1", "stage": "search", "arch": "stem_c16_s2-head_c64", "arch_hash": "h-b",
     "status": "ok", "params": 4321, "macs": 98765, "accuracy": 0.625, "extra": {"genome": [3]}},
    {"candidate_id": "cand-c", "run_id": "r1", "stage": "search", "arch": "stem_c8_s2-head_c32", "arch_hash": "h-c",
     "status": "failed", "error": "out of memory"},
]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NASFLOW_REGISTRY"}
    env["NASFLOW_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(extra)
    return env


def nasflow(*args, cwd=None, env=None, timeout=180) -> subprocess.CompletedProcess:
    """Run `python -m nasflow.cli ARGS` as a user would and capture what they would see."""
    return subprocess.run(
        [sys.executable, "-m", "nasflow.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env or cli_env(), timeout=timeout,
    )


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one `error:` message on stderr that contains every fragment, and no traceback."""
    assert result.returncode == EXIT_ERROR, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("error: ") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# ----------------------------------------------------------------------------------------- validate


@pytest.fixture
def spec_text(tmp_path):
    return tiny_spec_text(tmp_path)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_validate_good_spec(tmp_path, spec_text):
    path = tmp_path / "good.yaml"
    path.write_text(spec_text)
    result = nasflow("validate", path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "run id tiny-" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    "case, edit, needle, message",
    [
        ("unknown-key", ("  batch_size: 3\n", "  batch_size: 3\n  budgett: 3\n"), "budgett", "search.budgett: unknown key"),
        ("strategy", ("strategy: evolution", "strategy: evolutoin"), "evolutoin",
         "search.strategy: 'evolutoin' is not a registered search strategy; available: darts, evolution, fbnet, mnasnet, nsga2, optuna, proxyless, random"),
        ("yaml", ("  head_channels: 32\n", "  head_channels: 32\n   oops: 1\n"), "oops", "malformed YAML"),
    ],
)
def test_validate_bad_spec_names_file_and_line(tmp_path, spec_text, case, edit, needle, message):
    old, new = edit
    assert old in spec_text
    text = spec_text.replace(old, new)
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    result = nasflow("validate", path)
    assert_clean_error(result, f"{path}:{line_of(text, needle)}", message)


# ---------------------------------------------------------------------------------------------- sql


@pytest.fixture
def registry_file(tmp_path):
    path = tmp_path / "reg" / "registry.duckdb"
    assert Registry(path).add_candidates(ROWS) == len(ROWS)
    return path


def candidate_count(path: Path) -> int:
    return open_readonly(path).query("SELECT count(*) FROM candidates")[1][0][0]


QUERY = "SELECT candidate_id, arch, params, accuracy, status FROM candidates ORDER BY candidate_id"


def test_sql_table_csv_and_json(registry_file):
    table = nasflow("sql", QUERY, "--registry", registry_file)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["candidate_id", "arch", "params", "accuracy", "status"]
    assert lines[2].split() == ["cand-a", "stem_c8_s1-head_c32", "1234", "0.8125", "ok"]
    assert lines[3].split() == ["cand-b", "stem_c16_s2-head_c64", "4321", "0.625", "ok"]
    assert lines[4].split() == ["cand-c", "stem_c8_s2-head_c32", "NULL", "NULL", "failed"]
    assert lines[-1] == "(3 rows)"

    result = nasflow("sql", QUERY, "--registry", registry_file, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows == [
        {"candidate_id": "cand-a", "arch": "stem_c8_s1-head_c32", "params": "1234", "accuracy": "0.8125", "status": "ok"},
        {"candidate_id": "cand-b", "arch": "stem_c16_s2-head_c64", "params": "4321", "accuracy": "0.625", "status": "ok"},
        {"candidate_id": "cand-c", "arch": "stem_c8_s2-head_c32", "params": "", "accuracy": "", "status": "failed"},
    ]

    result = nasflow("sql", "SELECT candidate_id, params, accuracy, extra, created_at FROM candidates ORDER BY 1",
                     "--registry", registry_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    objects = json.loads(result.stdout)
    assert [(o["candidate_id"], o["params"], o["accuracy"], o["extra"]) for o in objects] == [
        ("cand-a", 1234, 0.8125, {"genome": [1, 2]}),
        ("cand-b", 4321, 0.625, {"genome": [3]}),
        ("cand-c", None, None, None),
    ]
    assert all(isinstance(o["created_at"], str) for o in objects)


def test_sql_refuses_writes(registry_file):
    result = nasflow("sql", "DELETE FROM candidates", "--registry", registry_file)
    assert_clean_error(result, "read-only")
    assert candidate_count(registry_file) == len(ROWS)


def test_sql_syntax_error_is_one_message(registry_file):
    assert_clean_error(nasflow("sql", "SELEC candidate_id FROM candidates", "--registry", registry_file), "SELEC")


def test_sql_missing_registry(tmp_path):
    missing = tmp_path / "nowhere" / "registry.duckdb"
    assert_clean_error(nasflow("sql", "SELECT 1", "--registry", missing), f"no registry at {missing}")
    assert not missing.exists() and not missing.parent.exists()
    # the default ./registry.duckdb: missing too, and not created by looking
    result = nasflow("sql", "SELECT 1", cwd=tmp_path)
    assert_clean_error(result, "no registry at registry.duckdb")
    assert not (tmp_path / "registry.duckdb").exists()


def test_sql_honours_nasflow_registry_env(tmp_path, registry_file):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # no registry.duckdb here: only the variable can lead to the file
    result = nasflow("sql", "SELECT candidate_id FROM candidates ORDER BY 1", "--format", "csv",
                     cwd=elsewhere, env=cli_env(NASFLOW_REGISTRY=str(registry_file)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["candidate_id", "cand-a", "cand-b", "cand-c"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_bytes(b"these are my notes, not a database\n" * 3)
    return path


def test_sql_on_a_text_file_is_refused_untouched(text_file):
    before = text_file.read_bytes()
    assert_clean_error(nasflow("sql", "SELECT 1", "--registry", text_file), "not a DuckDB database", str(text_file))
    assert text_file.read_bytes() == before
    assert sorted(p.name for p in text_file.parent.iterdir()) == [text_file.name]  # no .wal or lock left


def test_run_with_a_text_file_registry_is_refused_untouched(tmp_path, text_file):
    before = text_file.read_bytes()
    spec = tmp_path / "spec.yaml"
    text = tiny_spec_text(tmp_path).replace(f"registry: {{path: {tmp_path / 'registry.duckdb'}}}",
                                            f"registry: {{path: {text_file}}}")
    assert str(text_file) in text
    spec.write_text(text)
    result = nasflow("run", spec)
    assert_clean_error(result, "not a DuckDB database", str(text_file))
    assert text_file.read_bytes() == before
    assert not (tmp_path / "runs").exists(), "work started although the registry was refused"


# ------------------------------------------------------------------------ a real run, Ctrl-C, resume


@dataclass
class Story:
    registry: Path
    run_id: str
    seen_while_running: int  # candidates a concurrent `nasflow sql` saw while the run was alive
    reads: int  # successful concurrent reads
    interrupted: subprocess.CompletedProcess
    after_interrupt: dict  # registry state right after the interrupted process exited
    resumed: subprocess.CompletedProcess


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    """Kill what the test started: the run and the Prefect server in its process group."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: dumps every thread's stack to stderr
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _registry_state(path: Path, run_id: str) -> dict:
    reg = open_readonly(path)
    _, ids = reg.query("SELECT candidate_id FROM candidates WHERE run_id = ?", [run_id])
    return {"run": reg.get_run(run_id), "candidate_ids": {r[0] for r in ids}}


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    """Start a run, read the registry while it writes, Ctrl-C it, then run the same spec to the end."""
    tmp = tmp_path_factory.mktemp("story")
    spec = tmp / "tiny.yaml"
    text = tiny_spec_text(tmp, name="story")
    assert "  budget: 6\n" in text
    # proxies long enough that the search is still going when the reader's poll sees a candidate
    assert "proxy: {epochs: 1, subset: 0.5}" in text
    spec.write_text(text.replace("  budget: 6\n", "  budget: 12\n").replace(
        "proxy: {epochs: 1, subset: 0.5}", "proxy: {epochs: 6, subset: 1.0}"))
    registry = tmp / "registry.duckdb"
    validated = nasflow("validate", spec)
    assert validated.returncode == 0, validated.stderr
    run_id = re.search(r"run id (\S+?);", validated.stdout).group(1)

    out, err = tmp / "run1.out", tmp / "run1.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasflow.cli", "run", str(spec)],
            stdout=stdout, stderr=stderr, cwd=tmp, env=cli_env(PYTHONFAULTHANDLER="1"),
            # its own process group, like a shell job, so that SIGINT reaches the run and every child it
            # started (as Ctrl-C in a terminal does) and nothing else; SIGINT un-ignored in case this
            # test itself runs in a background job
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        seen, reads, deadline = 0, 0, time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended (exit {proc.returncode}) before a concurrent `nasflow sql` saw any candidate "
                    f"({reads} successful reads): cannot show that readers work while a run writes\n"
                    f"{_tail(err)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no candidate visible to `nasflow sql` within 300 s of starting the run\n{_tail(err)}")
            read = nasflow("sql", "SELECT count(*) AS n FROM candidates", "--registry", registry, "--format", "csv")
            if read.returncode == 0:
                reads += 1
                seen = int(read.stdout.split()[-1])
                if seen > 0 and proc.poll() is None:
                    break
            elif reads:
                pytest.fail(f"`nasflow sql` failed while the run was writing:\n{read.stderr}")
            else:
                # until the run has created the file and its tables there is nothing to read yet
                assert read.returncode == EXIT_ERROR and "Traceback" not in read.stderr, read.stderr
            time.sleep(1.0)

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            _stop(proc)
            pytest.fail(f"`nasflow run` did not stop within 120 s of SIGINT\n{_tail(err, 20000)}")
    finally:
        _stop(proc)
    interrupted = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
    if interrupted.returncode == 0:
        pytest.fail("the run finished before SIGINT reached it; give the tiny spec a larger search budget")
    after_interrupt = _registry_state(registry, run_id)

    resumed = nasflow("run", spec, cwd=tmp, timeout=400)
    return Story(registry, run_id, seen, reads, interrupted, after_interrupt, resumed)


def test_readers_see_candidates_while_a_run_writes(story):
    assert story.seen_while_running > 0 and story.reads >= 1


def test_ctrl_c_stops_the_run_with_one_message(story):
    result = story.interrupted
    assert result.returncode == EXIT_INTERRUPTED, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one message on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("interrupted") and "resume" in lines[0], lines[0]
    run = story.after_interrupt["run"]
    assert run["status"] == "interrupted" and run["finished_at"] is not None, run
    assert len(story.after_interrupt["candidate_ids"]) >= story.seen_while_running


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+) +(.*)$")


def test_progress_is_printed_as_log_lines_when_stdout_is_not_a_terminal(story):
    lines = [m.groups() for m in map(LOG_LINE.match, story.resumed.stdout.splitlines()) if m]
    stages = {stage for stage, _ in lines}
    assert {"search", "train", "morph"} <= stages, story.resumed.stdout
    assert ("train", "started (2 steps): 1 candidates x 2 epochs") in lines, story.resumed.stdout
    # the train bar counts epochs, advanced from the training task's worker thread as each one ends
    epochs = [text for stage, text in lines if stage == "train" and " epoch " in text]
    assert [e.split()[0] for e in epochs] == ["1/2", "2/2"], epochs
    assert all(re.fullmatch(r"\d/2 [0-9a-f]{8} epoch \d/2, loss \S+", e) for e in epochs), epochs
    assert any(stage == "train" and text.startswith("done:") for stage, text in lines)


def test_rerun_resumes_without_duplicates(story):
    result = story.resumed
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Traceback" not in result.stderr, result.stderr
    assert "resumed" in result.stdout, result.stdout
    reg = open_readonly(story.registry)
    assert reg.get_run(story.run_id)["status"] == "finished"
    _, rows = reg.query("SELECT candidate_id, stage, arch_hash FROM candidates WHERE run_id = ?", [story.run_id])
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids))
    assert story.after_interrupt["candidate_ids"] <= set(ids), "candidates recorded before Ctrl-C were lost"
    search = [r for r in rows if r[1] == "search"]
    assert 0 < len(search) <= 12
    assert len(search) == len({r[2] for r in search}), "an architecture was evaluated twice by the search"
    assert {r[1] for r in rows} == {"search", "train", "morph"}


def legend(stdout: str) -> list[str]:
    """The arch strings of the `#n arch` legend printed under a front table."""
    return [m.group(2) for m in re.finditer(r"^#(\d+) (\S+)$", stdout, re.MULTILINE)]


def test_report_prints_the_front(story):
    assert story.resumed.returncode == 0, "needs the finished run"
    result = nasflow("report", story.run_id, "--registry", story.registry)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"run {story.run_id} (finished): Pareto front" in result.stdout
    assert "accuracy" in result.stdout and "params" in result.stdout
    assert "torch-cpu ms" in result.stdout and "onnxruntime-cpu ms" in result.stdout  # never cut to fit 80 columns
    front = legend(result.stdout)
    reg = open_readonly(story.registry)
    _, ok = reg.query("SELECT arch FROM candidates WHERE run_id = ? AND status = 'ok'", [story.run_id])
    assert front and set(front) <= {r[0] for r in ok}
    assert front == legend(story.resumed.stdout), "report and run disagree on the front"

    everything = nasflow("report", story.run_id, "--registry", story.registry, "--all")
    assert everything.returncode == 0, everything.stderr
    assert len(legend(everything.stdout)) == len(ok) >= len(front)


def test_report_unknown_run_lists_known_runs(story):
    result = nasflow("report", "nope", "--registry", story.registry)
    assert_clean_error(result, "no run 'nope'", story.run_id)


# ------------------------------------------------------------------------------- plugins and devices


def test_plugins_lists_kind_name_and_package():
    result = nasflow("plugins")
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:3]) for line in result.stdout.splitlines()}
    assert {("kind", "name", "package"), ("search", "evolution", "nasflow"), ("search", "random", "nasflow"),
            ("device", "torch-cpu", "nasflow"), ("device", "onnxruntime-cpu", "nasflow"),
            ("compressor", "morphnet", "nasflow")} <= rows


def test_devices_shows_cpu_backends_usable():
    result = nasflow("devices")
    assert result.returncode == 0, result.stderr
    usable = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:-1]}
    assert usable.get("torch-cpu") == "yes" and usable.get("onnxruntime-cpu") == "yes", result.stdout


def test_profile_times_each_operator_in_passes_and_reuses_the_lut(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec_text(tmp_path))
    first = nasflow("profile", spec, "--device", "torch-cpu", "--passes", "2")
    assert first.returncode == 0, first.stderr
    assert "torch-cpu" in first.stdout and "measured" in first.stdout
    _, rows = open_readonly(tmp_path / "registry.duckdb").query("SELECT count(*) FROM lut WHERE device = 'torch-cpu'")
    assert rows[0][0] > 0
    again = nasflow("profile", spec, "--device", "torch-cpu")
    assert again.returncode == 0 and "reused" in again.stdout
    assert re.search(r"^\d\d:\d\d:\d\d lut +started \(\d+ steps\): torch-cpu: each operator x 2 pass", first.stdout, re.M), first.stdout
    assert re.search(r"^\d\d:\d\d:\d\d lut +done: torch-cpu: ready", first.stdout, re.M), first.stdout
    bad = nasflow("profile", spec, "--passes", "0")
    assert_clean_error(bad, "--passes 0: profile.passes: Input should be greater than or equal to 1")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--calibrate", "1"], ["--calibrate 1: profile.calibrate must be 0 or at least 2"]),
        (["--calibrate", "-2"], ["--calibrate -2: profile.calibrate: Input should be greater than or equal to 0"]),
        (["--passes", "x"], ["argument --passes: invalid int value: 'x'", "nasflow profile --help"]),
        (["--passes", "2.5"], ["argument --passes: invalid int value: '2.5'"]),
        (["--device", "tpu9"], ["device(s) tpu9 not in the spec's devices (torch-cpu, onnxruntime-cpu)"]),
    ],
)
def test_bad_profile_options_are_one_error_line(tmp_path, args, fragments):
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec_text(tmp_path))
    assert_clean_error(nasflow("profile", spec, *args), *fragments)
    assert not (tmp_path / "registry.duckdb").exists(), "work started although the command line was refused"


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "the following arguments are required: command"),
        (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
        (["validate"], "the following arguments are required: spec"),
        (["profile"], "the following arguments are required: spec"),
        (["report"], "the following arguments are required: run_id"),
        (["sql", "SELECT 1", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["plugins", "--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_bad_command_lines_are_one_error_line(args, fragment):
    result = nasflow(*args)
    assert_clean_error(result, fragment)
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr


def test_front_table_never_cuts_device_names_or_numbers():
    from rich.console import Console

    from nasflow.console import front_table, print_table

    devices = ["torch-cpu", "onnxruntime-cpu", "edgetpu-model"]
    row = {"stage": "search", "accuracy": 0.91234, "params": 12345, "macs": 1234567, "score": 0.8,
           "latency": {"torch-cpu": {"median_ms": 0.123, "source": "measured"},
                       "onnxruntime-cpu": {"median_ms": 0.0456, "source": "lut"},
                       "edgetpu-model": {"median_ms": 1.5, "source": "estimated"}}}
    for width in (40, 80, 200):
        out = io.StringIO()
        console = Console(file=out, width=width, force_terminal=False)
        print_table(console, front_table([row], devices, "torch-cpu", "front"))
        text = out.getvalue()
        for needed in ("torch-cpu ms", "onnxruntime-cpu ms", "edgetpu-model ms", "accuracy", "1,234,567", "12,345",
                       "0.9123", "0.0456 (lut)", "1.5 (estimated)"):
            assert needed in text, (width, needed, text)
        assert "…" not in text, text  # rich's ellipsis
        assert console.width == width  # the console is left as it was


# ------------------------------------------------------------------------------------ progress


def _advance_elsewhere(channel) -> bool:
    return channel.advance(1, "from another process")


def test_progress_reaches_the_reporter_from_worker_threads_and_degrades_in_other_processes():
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console

    from nasflow.console import LogReporter
    from nasflow.progress import progress_channel, using_reporter

    out = io.StringIO()
    rep = LogReporter(Console(file=out, force_terminal=False, width=200))
    with using_reporter(rep):
        rep.stage_start("train", 4, "2 candidates x 2 epochs")
        with progress_channel("train") as channel:
            # a bare thread pool carries no context variables: the channel must not depend on them
            with ThreadPoolExecutor(2) as pool:
                delivered = list(pool.map(lambda i: channel.advance(1, f"epoch {i}"), range(3)))
            with multiprocessing.get_context("spawn").Pool(1) as procs:
                elsewhere = procs.apply(_advance_elsewhere, (channel,))
        assert not channel.advance(1, "after the stage closed it")
        rep.advance("train", 1, "caught up when the result came back")
        rep.stage_end("train", "2 trained")
    assert delivered == [True, True, True] and elsewhere is False
    lines = [LOG_LINE.match(line).groups() for line in out.getvalue().splitlines()]
    assert [text.split()[0] for stage, text in lines[1:-1]] == ["1/4", "2/4", "3/4", "4/4"], lines
    assert lines[-1] == ("train", "done: 2 trained")


def test_a_closed_pipe_ends_a_command_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "nasflow.cli", "plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())
    proc.stdout.close()  # as `| head` does once it has what it wants
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
