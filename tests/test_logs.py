"""Library output goes to the study log, labelled with stage and unit; the console keeps peftlab's.

Covers the capture in this process (warnings, logging handlers bound to stderr before and during
the capture, raw stderr writes, a real transformers LOAD REPORT), --verbose, and the two ways
other processes reach the same log: a bench unit process logging by itself (`capture_child`, run
in a real subprocess here) and a helper's stderr pipe read by the parent (`pump`).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from peftlab import logs


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, soft_wrap=True), buf


@pytest.fixture
def stderr_handler():
    """A logger with a StreamHandler bound to sys.stderr before any capture (as transformers
    binds its own at import)."""
    lg = logging.getLogger("peftlab-test-library")
    handler = logging.StreamHandler(sys.stderr)
    lg.addHandler(handler)
    lg.propagate = False
    lg.setLevel(logging.INFO)
    yield lg, handler
    lg.removeHandler(handler)


def test_capture_sends_library_output_to_the_log_with_stage_and_unit(tmp_path, capsys,
                                                                     stderr_handler):
    lg, handler = stderr_handler
    console, shown = _console()
    log = tmp_path / "study" / "log.txt"
    before = (sys.stderr, warnings.showwarning, handler.stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with logs.capture(log, console=console) as sink:
            with logs.stage("finetune"):
                for item in logs.track(console, "finetune", ["run-a", "run-b"]):
                    warnings.warn(f"deprecated in {item}", FutureWarning, stacklevel=1)
                    lg.warning("LOAD REPORT from %s\n  score.weight | MISSING", item)
                    print(f"raw line from {item}", file=sys.stderr)
                    console.print(f"done {item}")
            with logs.stage("bench"):
                late = logging.getLogger("peftlab-test-late")  # a handler made inside
                late.addHandler(logging.StreamHandler())
                late.propagate = False
                late.warning("late handler")
    assert (sys.stderr, warnings.showwarning, handler.stream) == before  # all restored
    text = log.read_text()
    lines = text.splitlines()
    for item in ("run-a", "run-b"):
        label = f"[finetune {item}]"
        assert any(label in ln and f"FutureWarning: deprecated in {item}" in ln
                   and "test_logs.py" in ln for ln in lines), text
        assert any(label in ln and f"LOAD REPORT from {item}" in ln for ln in lines), text
        assert any(label in ln and "score.weight | MISSING" in ln for ln in lines), text
        assert any(label in ln and f"raw line from {item}" in ln for ln in lines), text
    assert any("[bench] late handler" in ln for ln in lines), text
    assert sink.lines == len(lines) == 9
    console_text = shown.getvalue()
    assert "done run-a" in console_text and "done run-b" in console_text
    assert "2/2" in console_text and "eta" in console_text  # the progress bar
    for library in ("Warning", "LOAD REPORT", "MISSING", "raw line", "late handler"):
        assert library not in console_text
    out, err = capsys.readouterr()
    assert "LOAD REPORT" not in out + err and "raw line" not in out + err


def test_verbose_shows_library_lines_live_and_still_logs_them(tmp_path, stderr_handler):
    lg, _ = stderr_handler
    console, shown = _console()
    log = tmp_path / "log.txt"
    with logs.capture(None, console=console, verbose=True), \
            logs.capture(log, console=console), logs.stage("drift"), logs.unit("sst2"):
        lg.warning("a library says something")
    assert "[drift sst2] a library says something" in shown.getvalue()
    assert "[drift sst2] a library says something" in log.read_text()


def test_a_capture_without_a_file_drops_library_lines(capsys, stderr_handler):
    lg, _ = stderr_handler
    console, shown = _console()
    with logs.capture(None, console=console):
        lg.warning("dropped")
        console.print("kept")
    out, err = capsys.readouterr()
    assert "dropped" not in out + err + shown.getvalue()
    assert "kept" in shown.getvalue()


def test_a_real_transformers_load_report_goes_to_the_log(tmp_path, tiny_llama_dir, capsys):
    """Loading the tiny Llama with a 3-label head leaves `score` newly initialised: transformers
    logs a LOAD REPORT table, which must land in the log only."""
    from transformers import AutoModelForSequenceClassification

    console, shown = _console()
    log = tmp_path / "log.txt"
    with logs.capture(log, console=console), logs.stage("represent"), logs.unit("base"):
        AutoModelForSequenceClassification.from_pretrained(
            tiny_llama_dir, num_labels=3, ignore_mismatched_sizes=True)
    text = log.read_text()
    assert "LOAD REPORT" in text and "[represent base]" in text
    out, err = capsys.readouterr()
    assert "LOAD REPORT" not in out + err + shown.getvalue()


CHILD = """
import logging, os, sys, warnings
from peftlab.logs import capture_child
pre = logging.StreamHandler()            # bound to stderr before, as a library's at import
logging.getLogger("lib").addHandler(pre)
capture_child({"path": sys.argv[1] or None, "label": "bench unmerged/run-1",
               "verbose": sys.argv[2] == "1"})
warnings.warn("a child warning", FutureWarning)
logging.getLogger("lib").warning("LOAD REPORT in the child")
print("a child print")
os.write(2, b"raw fd 2 from C code\\n")
"""


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_a_unit_process_logs_everything_under_its_label(tmp_path, verbose):
    log = tmp_path / "log.txt"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(log), "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    label = "[bench unmerged/run-1]"
    for piece in ("FutureWarning: a child warning", "LOAD REPORT in the child",
                  "a child print"):
        assert any(label in ln and piece in ln for ln in lines), lines
    assert "raw fd 2 from C code" in lines  # fd 2 itself points at the log
    assert proc.stdout == ""
    if verbose:  # shown lines go to the parent, marked as logged already
        shown = proc.stderr.splitlines()
        assert shown and all(ln.startswith(logs._SHOWN) for ln in shown), shown
        assert any("a child warning" in ln for ln in shown)
    else:
        assert proc.stderr == ""


def test_a_helper_process_pipe_is_logged_once_and_shown_when_verbose(tmp_path):
    """The bench fork server's stderr is a pipe the parent reads (`pump`): plain lines are
    logged under the parent's current label; lines a child marked as logged are only shown."""
    script = ("import sys; sys.stderr.write('plain from the server\\n'); "
              f"sys.stderr.write({logs._SHOWN!r} + '[bench x] already logged\\n')")
    console, shown = _console()
    log = tmp_path / "log.txt"
    with logs.capture(log, console=console, verbose=True), logs.stage("bench"), \
            logs.unit("merged/run-1"):
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
        reader = logs.pump(proc.stderr)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    text = log.read_text()
    assert "[bench merged/run-1] plain from the server" in text
    assert "already logged" not in text
    assert "[bench x] already logged" in shown.getvalue()


def test_child_settings_carry_the_active_label(tmp_path):
    assert logs.child_settings() is None  # no capture: units behave as before
    with logs.capture(tmp_path / "log.txt"), logs.stage("bench"), logs.unit("base/sst2"):
        settings = logs.child_settings()
    assert settings == {"path": str(tmp_path / "log.txt"), "label": "bench base/sst2",
                        "verbose": False}
    json.dumps(settings)  # travels inside the job file


def test_script_log_reports_where_the_lines_went(tmp_path, monkeypatch, capsys,
                                                stderr_handler):
    lg, _ = stderr_handler
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with logs.script_log("bench-overhead"):
        lg.warning("LOAD REPORT in a benchmark")
    path = Path(tmp_path) / "peftlab-bench-overhead.log"
    assert "LOAD REPORT in a benchmark" in path.read_text()
    err = capsys.readouterr().err
    assert f"library messages: 1 lines in {path}" in err
    assert "LOAD REPORT" not in err
