"""The `peftlab` command: validate, plan, data, run and results, and one clear error per bad input.

Most commands run in-process through `peftlab.cli.main()` (the console entry point itself, so exit
codes and the `error: ...` line are the real ones) to avoid a ~10 s torch import per command on two
shared cores; the lock test runs `python -m peftlab.cli` in a real second process.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from peftlab.pipeline import load_study
from peftlab.store import Store
from peftlab.testing import tiny_spec, write_spec


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The `error: ...` message (with any continuation lines), checked to be the only one."""
        assert "Traceback" not in self.err, self.err
        lines = self.err.splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
        assert len(starts) == 1, f"expected one 'error:' message, got:\n{self.err}"
        return "\n".join(lines[starts[0]:])


def cli(*args: str | Path) -> Result:
    """Run `peftlab ARGS` in this process; an uncaught exception is reported like Python would."""
    from peftlab import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["peftlab", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli_module.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what the interpreter would print for an escaped exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


def squash(text: str | Path) -> str:
    """Text without whitespace: rich wraps plain output at 80 columns when it is not a terminal."""
    return "".join(str(text).split())


def says(text: str, *pieces: str | Path) -> bool:
    return all(squash(p) in squash(text) for p in pieces)


def failed(res: Result, *expected: str | Path) -> str:
    """Assert the run ended in one clear error naming every `expected` piece; return it."""
    assert res.code == 2, f"exit code {res.code}\nstdout: {res.out}\nstderr: {res.err}"
    msg = res.error
    for piece in expected:
        assert str(piece) in msg, f"{piece!r} missing from: {msg}"
    return msg


def spec_for(tmp_path: Path, model: Path | str, **kw: Any) -> dict[str, Any]:
    """One task, one LoRA run, a tiny model; deep-copied (tiny_spec shares its method presets)."""
    kw.setdefault("tasks", ("sst2",))
    kw.setdefault("methods", ("lora",))
    kw.setdefault("seeds", (1,))
    return copy.deepcopy(tiny_spec(tmp_path / "study", model_dir=model, **kw))  # type: ignore[arg-type]


# -- data written by the tests -------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("user-data")
    contents = {
        "train": "text,stars\na warm and witty film,pos\na dull mess,neg\n"
                 "funny and smart,pos\nflat jokes,neg\n",
        "eval": "text,stars\nwonderful cast,pos\npainfully bad,neg\n",
        "fields": "text,stars\na warm film,pos\na dull, lifeless mess,neg\n",
        "label": "text,stars\na warm film,pos\na dull mess,meh\n",
        "empty": "",
    }
    out = {}
    for name, text in contents.items():
        out[name] = d / f"{name}.csv"
        out[name].write_text(text)
    return out


def file_task(data: dict[str, Path], train: str = "train", **kw: Any) -> dict[str, Any]:
    task = {"name": "reviews", "files": {"train": str(data[train]), "eval": str(data["eval"])},
            "columns": {"text_a": "text", "label": "stars"}, "label_names": ["neg", "pos"]}
    task.update(kw)
    return task


def file_spec(tmp_path: Path, model: Path | str, data: dict[str, Path], **kw: Any
              ) -> dict[str, Any]:
    spec = spec_for(tmp_path, model)
    spec["tasks"] = [file_task(data, **kw)]
    spec["data"] = {}
    spec["training"].update(batch_size=1, grad_accum=1)
    return spec


# -- validate / plan / data ----------------------------------------------------------------------


def test_validate_good_spec(tmp_path: Path, tiny_llama_dir: Path, glue_dir: Path) -> None:
    spec = spec_for(tmp_path, tiny_llama_dir, tasks=("sst2", "rte"), methods=("full", "lora"),
                    seeds=(1, 2))
    path = write_spec(tmp_path / "good.yaml", spec)
    res = cli("validate", path, "--data-dir", glue_dir)
    assert res.code == 0, res.err
    assert res.out.startswith("ok: ") and says(res.out, path, "(8 training runs)")
    assert "error" not in res.err and "Traceback" not in res.err


def test_validate_shipped_quickstart() -> None:
    from peftlab.spec import SHIPPED_DIR

    for spec in ("quickstart", SHIPPED_DIR / "quickstart.yaml"):  # by name or by path
        res = cli("validate", spec)
        assert res.code == 0, res.err
        assert says(res.out, f"ok: {spec}", "(18 training runs)")


def test_validate_from_the_parent_folder_finds_files_beside_the_spec(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    """`peftlab validate sub/user.yaml` with train.csv beside the spec (the issue's case)."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "train.csv").write_text("text,stars\na warm film,pos\na dull mess,neg\n"
                                   "funny,pos\nflat,neg\n")
    (sub / "eval.csv").write_text("text,stars\nwonderful,pos\nbad,neg\n")
    spec = spec_for(tmp_path, tiny_llama_dir)
    spec["tasks"] = [{"name": "reviews", "files": {"train": "train.csv", "eval": "eval.csv"},
                      "columns": {"text_a": "text", "label": "stars"},
                      "label_names": ["neg", "pos"]}]
    spec["data"] = {}
    spec["training"].update(batch_size=1, grad_accum=1)
    write_spec(sub / "user.yaml", spec)
    monkeypatch.chdir(tmp_path)
    res = cli("validate", "sub/user.yaml")
    assert res.code == 0, res.err
    rows = {r["split"]: r["rows"] for r in json.loads(cli("data", "sub/user.yaml", "--json").out)}
    assert rows == {"train": 4, "eval": 2}
    (sub / "train.csv").unlink()  # the message names the file where it was looked for
    failed(cli("validate", "sub/user.yaml"), sub / "train.csv", "not found")


def test_duplicate_key_is_one_error_naming_both_lines(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "spec.yaml", spec_for(tmp_path, "tinyllama"))
    path.write_text(path.read_text() + "seeds: [1, 2]\n")
    first = next(i + 1 for i, line in enumerate(path.read_text().splitlines())
                 if line.startswith("seeds:"))
    last = len(path.read_text().splitlines())
    for command in ("validate", "plan", "run"):
        failed(cli(command, path), path, "seeds", f"lines {first} and {last}")


def test_plan_json_lists_runs_with_statuses(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "tinyllama", tasks=("sst2", "rte"), methods=("full", "lora"),
                    seeds=(1, 2))
    path = write_spec(tmp_path / "spec.yaml", spec)
    res = cli("plan", path, "--json")
    assert res.code == 0, res.err
    plan = json.loads(res.out)
    assert plan["study"] == "tiny" and plan["output_dir"] == str(tmp_path / "study")
    runs = plan["runs"]
    expected = [r.run_id for r in load_study(path).runs()]
    assert [r["run_id"] for r in runs] == expected and len(runs) == 8
    assert {(r["task"], r["method"], r["seed"]) for r in runs} == {
        (t, m, s) for t in ("sst2", "rte") for m in ("full", "lora") for s in (1, 2)}
    assert all(r["status"] == "pending" for r in runs)
    assert not (tmp_path / "study").exists()  # planning creates nothing

    # a study directory with a finished, a failed and an interrupted run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = Store(tmp_path / "study")
    store.put("runs", expected[0], {"status": "done"})
    store.put("runs", expected[1], {"status": "failed", "failure_reason": "loss diverged"})
    store.put("runs", expected[2], {"status": "running", "pid": dead.pid})
    store.close()
    runs = json.loads(cli("plan", path, "--json").out)["runs"]
    assert [r["status"] for r in runs[:4]] == ["done", "failed", "interrupted", "pending"]
    assert runs[1]["reason"] == "loss diverged"

    table = cli("plan", path)
    assert table.code == 0
    assert says(table.out, "1 done, 7 to do", "loss diverged", expected[0])
    assert any(expected[2] in line and "interrupted" in line  # the table's row says it too
               for line in table.out.splitlines()), table.out


def test_plan_says_interrupted_for_a_zombie_and_for_a_reused_pid(tmp_path: Path) -> None:
    """A recorded pid that is a zombie (exited, not reaped) or now belongs to a process started
    after the record is no training process: the run is interrupted, not running."""
    import time

    import psutil

    path = write_spec(tmp_path / "spec.yaml", spec_for(tmp_path, "tinyllama", seeds=(1, 2, 3)))
    ids = [r.run_id for r in load_study(path).runs()]
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # wait for the child to exit, leaving it unreaped (WNOWAIT): a zombie
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        assert psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        hour_ago = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - 3600))
        store = Store(tmp_path / "study")
        store.put("runs", ids[0], {"status": "running", "pid": zombie.pid, "started": now})
        store.put("runs", ids[1], {"status": "running", "pid": live.pid, "started": now})
        store.put("runs", ids[2], {"status": "running", "pid": live.pid, "started": hour_ago})
        store.close()
        runs = json.loads(cli("plan", path, "--json").out)["runs"]
        assert [r["status"] for r in runs] == ["interrupted", "running", "interrupted"]
    finally:
        live.kill()
        live.wait()
        zombie.wait()


GLUE_COUNTS = {
    ("sst2", "train"): (67349, {"negative": 29780, "positive": 37569}),
    ("sst2", "eval"): (872, {"negative": 428, "positive": 444}),
    ("mrpc", "train"): (3668, {"not_equivalent": 1194, "equivalent": 2474}),
    ("mrpc", "eval"): (408, {"not_equivalent": 129, "equivalent": 279}),
    ("rte", "train"): (2490, {"entailment": 1249, "not_entailment": 1241}),
    ("rte", "eval"): (277, {"entailment": 146, "not_entailment": 131}),
}


def test_data_json_reports_exact_glue_counts(tmp_path: Path, glue_dir: Path) -> None:
    spec = spec_for(tmp_path, "tinyllama", tasks=("sst2", "mrpc", "rte"), train_samples=100,
                    eval_samples=300)
    path = write_spec(tmp_path / "glue.yaml", spec)
    res = cli("data", path, "--data-dir", glue_dir, "--json")
    assert res.code == 0, res.err
    rows = {(r["task"], r["split"]): r for r in json.loads(res.out)}
    assert set(rows) == set(GLUE_COUNTS)
    for key, (n, labels) in GLUE_COUNTS.items():
        r = rows[key]
        assert r["rows"] == n, key
        assert r["label_counts"] == labels, key
        assert sum(r["label_counts"].values()) == n
        assert r["rows_used"] == min(n, 100 if key[1] == "train" else 300), key

    text = cli("data", path, "--data-dir", glue_dir)
    assert text.code == 0
    assert "67,349" in text.out and "29,780" in text.out and "37,569" in text.out


def test_data_json_on_user_files(tmp_path: Path, files: dict[str, Path]) -> None:
    path = write_spec(tmp_path / "files.yaml", file_spec(tmp_path, "tinyllama", files))
    res = cli("data", path, "--json")
    assert res.code == 0, res.err
    rows = {r["split"]: r for r in json.loads(res.out)}
    assert rows["train"]["rows"] == 4 and rows["train"]["label_counts"] == {"neg": 2, "pos": 2}
    assert rows["eval"]["rows"] == 2


# -- run and results -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, glue_dir: Path
             ) -> dict[str, Any]:
    """One tiny LoRA run on SST-2, trained through `peftlab run --stages data,finetune`."""
    tmp = tmp_path_factory.mktemp("cli-run")
    spec = spec_for(tmp, tiny_llama_dir, train_samples=16, eval_samples=8)
    path = write_spec(tmp / "spec.yaml", spec)
    before = json.loads(cli("plan", path, "--json").out)["runs"]
    res = cli("run", path, "--stages", "data,finetune", "--data-dir", glue_dir)
    return {"path": path, "study": tmp / "study", "res": res, "before": before,
            "run_id": load_study(path).runs()[0].run_id}


def test_run_trains_and_records(finished: dict[str, Any]) -> None:
    res = finished["res"]
    assert res.code == 0, res.err
    assert says(res.out, f"study directory: {finished['study']}")
    assert [r["status"] for r in finished["before"]] == ["pending"]
    after = json.loads(cli("plan", finished["path"], "--json").out)["runs"]
    assert [(r["run_id"], r["status"]) for r in after] == [(finished["run_id"], "done")]
    study = finished["study"]
    assert (study / "spec.yaml").read_text() == finished["path"].read_text()
    assert not list(study.rglob("*.tmp-*"))
    rec = Store(study, create=False).get("runs", finished["run_id"])
    assert rec is not None and (study / rec["artifact"]).is_dir()


def test_results_csv(finished: dict[str, Any]) -> None:
    res = cli("results", finished["study"], "--table", "runs", "--format", "csv")
    assert res.code == 0, res.err
    df = pd.read_csv(io.StringIO(res.out))
    assert len(df) == 1
    row = df.iloc[0]
    assert row["key"] == finished["run_id"] and row["run_id"] == finished["run_id"]
    assert row["status"] == "done" and row["task"] == "sst2" and row["method"] == "lora"
    assert 0.0 <= row["metrics.accuracy.value"] <= 1.0
    assert row["config.params.r"] == 4
    for col in ("provenance.toolkit_commit", "provenance.versions.torch",
                "provenance.device.platform"):
        assert col in df.columns


def test_results_json(finished: dict[str, Any]) -> None:
    res = cli("results", finished["study"], "--table", "runs", "--format", "json")
    assert res.code == 0, res.err
    recs = json.loads(res.out)
    assert len(recs) == 1
    rec = recs[0]
    assert rec["key"] == rec["run_id"] == finished["run_id"]
    assert rec["config"]["params"]["r"] == 4 and rec["config"]["training"]["learning_rate"] == 5e-3
    assert rec["config"]["train_samples"] == 16
    assert set(rec["provenance"]) >= {"versions", "device", "toolkit_commit"}

    data = json.loads(cli("results", finished["study"], "--table", "data", "--format",
                          "json").out)
    train = next(r for r in data if r["key"] == "sst2/train")
    assert train["rows"] == 67349 and train["rows_used"] == 16


def test_run_records_each_stage_wall_time_per_session(finished: dict[str, Any]) -> None:
    """`stage_times`: one record per stage of the `peftlab run` invocation, in order, done, with
    its seconds; a failing stage is recorded as failed (the study's wall time over resumed
    sessions is the sum of these records)."""
    from peftlab.pipeline import _stage_time

    times = json.loads(cli("results", finished["study"], "--table", "stage_times", "--format",
                           "json").out)
    assert [r["stage"] for r in sorted(times, key=lambda r: r["key"])] == ["data", "finetune"]
    assert all(r["status"] == "done" and r["seconds"] > 0 for r in times)
    assert len({r["session"] for r in times}) == 1
    store = Store(finished["study"])
    try:
        with pytest.raises(RuntimeError), _stage_time(store, "s-1", 0, "boom"):
            raise RuntimeError("stage error")
        assert store.get("stage_times", "s-1/00-boom")["status"] == "failed"
    finally:
        store.close()


def test_results_without_a_table_lists_the_tables_and_their_rows(finished: dict[str, Any]
                                                                 ) -> None:
    store = Store(finished["study"], create=False)
    expected = {name: len(store.keys(name)) for name in store.tables()}
    store.close()
    assert expected["runs"] == 1 and expected["data"] >= 2
    res = cli("results", finished["study"], "--format", "json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["tables"] == expected
    csv = cli("results", finished["study"], "--format", "csv")
    assert dict(pd.read_csv(io.StringIO(csv.out)).itertuples(index=False)) == expected
    table = cli("results", finished["study"])
    assert table.code == 0, table.err
    rows = [line.split() for line in table.out.splitlines()]
    for name, count in expected.items():
        assert any(name in r and f"{count:,}" in r for r in rows), (name, table.out)
    assert says(table.out, f"peftlab results {finished['study']} --table NAME")


def test_results_table_and_bad_requests(finished: dict[str, Any], tmp_path: Path) -> None:
    res = cli("results", finished["study"], "--table", "runs")
    assert res.code == 0 and says(res.out, "runs (1 rows)")
    failed(cli("results", finished["study"], "--table", "nope"), "'nope'", "runs", "data")
    failed(cli("results", finished["study"], "--table", "runs", "--format", "xml"),
           "--format", "'xml'", "csv")
    failed(cli("results", tmp_path, "--table", "runs"), str(tmp_path), "not a study directory")


def test_run_again_skips_finished_work(finished: dict[str, Any], glue_dir: Path) -> None:
    study = finished["study"]
    first = Store(study, create=False).get("runs", finished["run_id"])
    res = cli("run", finished["path"], "--stages", "data,finetune", "--data-dir", glue_dir)
    assert res.code == 0, res.err
    assert says(res.err, "every run is done")
    again = Store(study, create=False).get("runs", finished["run_id"])
    assert again is not None and first is not None and again["finished"] == first["finished"]


def test_second_run_process_gets_the_lock_message(finished: dict[str, Any], glue_dir: Path
                                                  ) -> None:
    """A real second `peftlab` process on a locked study directory: exit 2, one clear line."""
    held = Store(finished["study"]).lock()
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "peftlab.cli", "run", str(finished["path"]),
             "--stages", "finetune", "--data-dir", str(glue_dir)],
            capture_output=True, text=True, timeout=300, env=env)
    finally:
        held.close()
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    failed(res, finished["study"], "in use by another peftlab process", f"pid {os.getpid()}")
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, nothing else


# -- bad input: exit 2, one `error:` message naming the file and key/row, no traceback -----------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s["training"].update(lerning_rate=1e-3),
         ["training.lerning_rate", "unknown key"]),
        (lambda s: s.update(trainig={"epochs": 1}), ["trainig", "unknown key"]),
        (lambda s: s["methods"]["lora"].update(rank=8), ["methods.lora", "rank", "unknown key"]),
        (lambda s: s["training"].update(batch_size="many"),
         ["training.batch_size", "integer", "'many'"]),
        (lambda s: s.pop("seeds"), ["seeds", "missing"]),
        (lambda s: s["model"].pop("name"), ["model.name", "missing"]),
        (lambda s: s.update(tasks=["sst2", "sst3"]), ["tasks[1].name", "'sst3'", "mrpc"]),
        (lambda s: s["methods"]["lora"].update(type="lorra"),
         ["methods.lora.type", "'lorra'", "full"]),
        (lambda s: s["methods"]["lora"].update(r=0), ["methods.lora", "r", "greater than 0"]),
        (lambda s: s["methods"]["lora"].update(alpha=-1),
         ["methods.lora", "alpha", "greater than 0"]),
        (lambda s: s["training"].update(learning_rate=0),
         ["training.learning_rate", "greater than 0"]),
        (lambda s: s.update(overrides=[{"tasks": ["mrpc"], "training": {"learning_rate": 1e-3}}]),
         ["overrides[0].tasks", "'mrpc'", "sst2"]),
    ],
    ids=["unknown-key", "unknown-top-key", "unknown-param", "wrong-type", "missing-field",
         "missing-nested", "unknown-task", "unknown-method", "lora-r", "lora-alpha", "lr",
         "override-task"],
)
def test_bad_spec(tmp_path: Path, edit, expected: list[str]) -> None:
    spec = spec_for(tmp_path, "tinyllama")
    edit(spec)
    path = write_spec(tmp_path / "bad.yaml", spec)
    for command in ("validate", "plan", "run"):
        failed(cli(command, path), path, *expected)


def test_unknown_model_alias(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "tinyllamma")
    path = write_spec(tmp_path / "bad.yaml", spec)
    msg = failed(cli("validate", path), "'tinyllamma'")
    assert "tinyllama" in msg.replace("'tinyllamma'", "") and "minilm" in msg  # lists aliases


def test_unknown_model_alias_names_file_and_key(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "bad.yaml", spec_for(tmp_path, "tinyllamma"))
    failed(cli("validate", path), path, "model.name")


@pytest.mark.parametrize("edit", [lambda s: s["methods"]["lora"].update(type=["lora"]),
                                  lambda s: s["methods"]["lora"].update(training=5)],
                         ids=["type-list", "training-int"])
def test_malformed_method_entry(tmp_path: Path, edit) -> None:
    spec = spec_for(tmp_path, "tinyllama")
    edit(spec)
    path = write_spec(tmp_path / "bad.yaml", spec)
    failed(cli("validate", path), path, "methods.lora")


def test_missing_spec_file_and_broken_yaml(tmp_path: Path) -> None:
    failed(cli("validate", tmp_path / "nope.yaml"), tmp_path / "nope.yaml", "not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [x\n")
    failed(cli("plan", broken), broken, "YAML")


@pytest.mark.parametrize(
    ("command", "kw", "expected"),
    [
        ("data", {"files": "missing"}, ["{missing}", "not found"]),
        ("validate", {"files": "missing"}, ["{missing}", "not found"]),
        ("data", {"columns": {"text_a": "review", "label": "stars"}},
         ["{train}", "'review'", "text_a", "found: text, stars"]),
        ("validate", {"train": "fields"}, ["{fields}", "line 3", "3 fields", "expected 2"]),
        ("data", {"train": "label"},
         ["{label}", "line 3", "'stars'", "'meh'", "label set", "neg, pos"]),
        ("data", {"train": "empty"}, ["{empty}", "empty"]),
    ],
    ids=["missing-file-data", "missing-file-validate", "missing-column", "field-count",
         "label", "empty-file"],
)
def test_bad_user_data(tmp_path: Path, files: dict[str, Path], command: str, kw: dict[str, Any],
                       expected: list[str]) -> None:
    paths = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "gone.csv")}
    task_kw = dict(kw)
    if task_kw.get("files") == "missing":
        task_kw["files"] = {"train": paths["missing"], "eval": str(files["eval"])}
    path = write_spec(tmp_path / "bad.yaml", file_spec(tmp_path, "tinyllama", files, **task_kw))
    failed(cli(command, path), *[e.format(**paths) for e in expected])


def test_glue_folder_without_the_task(tmp_path: Path) -> None:
    empty = tmp_path / "glue"
    empty.mkdir()
    path = write_spec(tmp_path / "spec.yaml", spec_for(tmp_path, "tinyllama"))
    failed(cli("data", path, "--data-dir", empty), empty / "SST-2" / "train.tsv", "not found")


def test_output_dir_not_writable(tmp_path: Path, tiny_llama_dir: Path,
                                 files: dict[str, Path]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file")
    spec = file_spec(tmp_path, tiny_llama_dir, files)
    spec["output_dir"] = str(blocker / "study")
    path = write_spec(tmp_path / "spec.yaml", spec)
    failed(cli("run", path), blocker / "study", "not writable", "output_dir")
    # --output-dir on the command line is checked the same way
    ok = write_spec(tmp_path / "ok.yaml", file_spec(tmp_path, tiny_llama_dir, files))
    failed(cli("run", ok, "--output-dir", blocker / "x"), blocker / "x", "not writable")


def test_unknown_lora_target_module(tmp_path: Path, tiny_llama_dir: Path,
                                    files: dict[str, Path]) -> None:
    spec = file_spec(tmp_path, tiny_llama_dir, files)
    spec["methods"]["lora"]["target_modules"] = ["q_proj", "query"]
    path = write_spec(tmp_path / "spec.yaml", spec)
    msg = failed(cli("validate", path), path, "methods.lora.target_modules", "'query'")
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in msg  # lists the model's linear modules
    failed(cli("run", path), path, "methods.lora.target_modules")
    assert not (tmp_path / "study").exists()  # refused before the study directory is touched


def test_batch_larger_than_train_split(tmp_path: Path, tiny_llama_dir: Path,
                                       glue_dir: Path) -> None:
    spec = spec_for(tmp_path, tiny_llama_dir, train_samples=32)
    spec["training"].update(batch_size=16, grad_accum=4)
    path = write_spec(tmp_path / "spec.yaml", spec)
    failed(cli("validate", path, "--data-dir", glue_dir), path, "training.batch_size", "64",
           "32 training examples", "'sst2'")


def test_batch_larger_than_user_train_file(tmp_path: Path, tiny_llama_dir: Path,
                                           files: dict[str, Path]) -> None:
    spec = file_spec(tmp_path, tiny_llama_dir, files)
    spec["training"]["batch_size"] = 8
    path = write_spec(tmp_path / "spec.yaml", spec)
    failed(cli("run", path), path, "training.batch_size", "4 training examples", "'reviews'")
    assert not (tmp_path / "study").exists()


def test_qlora_on_cpu(tmp_path: Path, tiny_llama_dir: Path, files: dict[str, Path]) -> None:
    spec = file_spec(tmp_path, tiny_llama_dir, files)
    spec["methods"] = {"qlora": {"type": "qlora", "r": 4, "target_modules": ["q_proj"]}}
    path = write_spec(tmp_path / "spec.yaml", spec)
    failed(cli("validate", path), path, "methods.qlora", "qlora", "CUDA", "'cpu'")


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "tinyllama")
    spec["training"]["lerning_rate"] = 1
    path = write_spec(tmp_path / "bad.yaml", spec)
    res = cli("--debug", "validate", path)
    assert res.code == 1 and "Traceback" in res.err and "SpecError" in res.err


# -- every command: missing, unknown and malformed arguments --------------------------------------


def _commands() -> dict[str, Any]:
    """The subcommands, read from the typer app itself (so a new command is walked too)."""
    import typer

    from peftlab.cli import app

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _numeric(param: Any) -> bool:
    """Whether a typer option takes a number (int, float, a list of them, or one or None)."""
    import typing

    td = getattr(param, "type_descriptor", None)
    if td is None:  # older typer: a click type
        return getattr(getattr(param, "type", None), "name", "") in ("integer", "float")
    return bool({td.annotation, *typing.get_args(td.annotation)} & {int, float})


def usage_error(res: Result, command: str, *expected: str) -> None:
    """Exit 2, the command's usage line, then exactly one `error:` line; nothing else."""
    assert res.code == 2, f"exit code {res.code}\nstdout: {res.out}\nstderr: {res.err}"
    assert "Traceback" not in res.err, res.err
    lines = res.err.splitlines()
    assert len(lines) == 2, res.err
    assert lines[0].startswith(f"Usage: peftlab {command}".rstrip()), res.err
    assert lines[1].startswith("error: ") and f"'peftlab {command}".rstrip() in lines[1], res.err
    for piece in expected:
        assert piece in lines[1], (piece, res.err)


def test_every_command_answers_bad_arguments_with_usage_and_one_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftlab.pipeline import STAGES

    commands = _commands()
    assert len(commands) >= 10 and "plan" in commands  # the walk really reads the app
    # every stage can be run on its own (`data` is the command printing the data, which the
    # data stage records), so walking the app walks every stage command too
    assert set(STAGES) <= set(commands), set(STAGES) - set(commands)
    monkeypatch.chdir(tmp_path)  # `init` with no arguments writes here
    ran: list[tuple[str, Any]] = []
    monkeypatch.setattr("peftlab.pipeline.run_stages",
                        lambda study, stages=None, **kw: ran.append((study.spec.name, stages)))
    for name, command in commands.items():
        required = [p.metavar or p.name.upper() for p in command.params if p.required]
        res = cli(name)
        if required:  # nothing given: which argument is missing
            usage_error(res, name, "Missing", required[0])
        else:  # everything has a default: it runs, or says in one line what it needs
            assert res.code in (0, 2) and "Traceback" not in res.err, (name, res.err)
            if res.code == 2:
                assert res.error
        if any(p.param_type_name == "argument" for p in command.params):
            # a wrong argument (a spec, study directory or target that is not there): one error
            # naming it, exit 2, no usage line (the command line itself was well formed)
            wrong = tmp_path / "missing" / "x.yaml"
            res = cli(name, wrong)
            failed(res, wrong)
            assert "Usage:" not in res.err, (name, res.err)
        usage_error(cli(name, "--no-such-option"), name, "No such option: --no-such-option")
        usage_error(cli(name, "x", "y", "z"), name, "unexpected extra argument")
        for p in command.params:  # every option: its value left out, or not a number
            if p.param_type_name != "option" or p.is_flag:
                continue
            usage_error(cli(name, p.opts[0]), name, p.opts[0], "requires an argument")
            if _numeric(p):
                usage_error(cli(name, p.opts[0], "many"), name, "Invalid value", p.opts[0])
    # the commands that ran with no arguments at all did what their defaults say
    assert ("quickstart", None) in ran  # `peftlab run` = the shipped quickstart
    assert (tmp_path / "my-study.yaml").is_file()  # `peftlab init`


def test_no_command_shows_the_overview_and_an_unknown_one_is_a_usage_error() -> None:
    res = cli()
    assert res.code == 0 and "Usage: peftlab" in res.out and "init" in res.out
    res = cli("nosuch")
    assert res.code == 2 and res.err.splitlines()[0].startswith("Usage: peftlab")
    assert res.error == "error: No such command 'nosuch'. (see 'peftlab --help')"


# -- init -----------------------------------------------------------------------------------------


def test_init_writes_a_starter_spec_that_validates(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from peftlab.spec import shipped_specs

    e2e = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e"
    if e2e.is_dir():  # the generation spec validates against its own data folder
        monkeypatch.setenv("PEFTLAB_E2E_DIR", str(e2e))
    monkeypatch.chdir(tmp_path)
    for template, shipped in shipped_specs().items():
        name = f"mine-{template}"
        res = cli("init", name, "--from", template)
        assert res.code == 0, res.err
        assert says(res.out, f"wrote {name}.yaml", f"peftlab run {name}.yaml")
        written = load_study(f"{name}.yaml")
        assert written.spec.name == name and written.spec.output_dir == Path(f"runs/{name}")
        assert [r.run_id for r in written.runs()] == [
            r.run_id for r in load_study(shipped, output_dir="o").runs()]
        ok = cli("validate", f"{name}.yaml")
        assert ok.code == 0, ok.err
    default = cli("init")
    assert default.code == 0 and load_study("my-study.yaml").spec.name == "my-study"
    nested = cli("init", "specs/deep")
    failed(nested, "specs/deep.yaml", "does not exist")


def test_init_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.yaml").write_text("mine\n")
    failed(cli("init", "taken"), "taken.yaml", "already exists")
    failed(cli("init", "taken.yaml"), "taken.yaml", "already exists")
    assert (tmp_path / "taken.yaml").read_text() == "mine\n"
    failed(cli("init", "other", "--from", "nope"), "--from", "'nope'", "quickstart")
    assert not (tmp_path / "other.yaml").exists()


# -- quiet console, log.txt -----------------------------------------------------------------------


def test_run_keeps_library_output_in_the_study_log(tmp_path: Path, glue_dir: Path) -> None:
    """Train one tiny LoRA run, measure it in every stage that loads models, and bench it
    unmerged. The base is a causal LM (as TinyLlama's checkpoint), so every load of it as a
    classifier prints transformers' LOAD REPORT (a new `score` head, an unused `lm_head`); the
    bench unit's process (forked from the bench server, outside pytest's warning filters) gets
    transformers' FutureWarning about `is_gradient_checkpointing` from peft: all of it must be in
    log.txt, every line labelled with its stage and unit, and none of it on the console."""
    import re

    from peftlab.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "base", lm_head=True)
    spec = spec_for(tmp_path, model, train_samples=16, eval_samples=8)
    spec["bench"].update(modes=["unmerged"], batch_sizes=[1])
    spec["forgetting"] = {"tasks": ["rte"], "probe_train_samples": 16, "probe_test_samples": 16,
                          "cv_folds": 2, "bootstrap_samples": 20, "lm_texts": 4}
    path = write_spec(tmp_path / "spec.yaml", spec)
    stages = ["data", "baselines", "finetune", "represent", "forgetting", "drift", "bench"]
    res = cli("run", path, "--stages", ",".join(stages), "--data-dir", glue_dir)
    assert res.code == 0, res.err
    run_id = load_study(path).runs()[0].run_id
    log = (tmp_path / "study" / "log.txt").read_text()
    unit = f"[bench unmerged/{run_id}]"
    assert any(unit in line and "Warning" in line for line in log.splitlines()), log
    assert "[peftlab] pid" in log
    labels = set()
    for line in log.splitlines():
        m = re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(.+?)\] ", line)
        assert m, f"unlabelled log line: {line!r}"
        labels.add(m.group(1))
    for label in labels - {"peftlab"}:  # "<stage> <unit>": which unit of which stage said it
        stage, _, rest = label.partition(" ")
        assert stage in stages and rest.strip(), (label, sorted(labels))
    # the model-loading stages all logged a load report, each under a unit of their own
    reports = {m.group(1).split(" ")[0] for m in re.finditer(r"\[(.+?)\] .*LOAD REPORT", log)}
    assert {"baselines", "finetune", "represent", "forgetting", "drift"} <= reports, reports
    console = res.out + res.err
    for line in log.splitlines():
        message = line.split("] ", 1)[1]
        assert message not in console, message
    assert "Warning" not in console and "warnings.warn" not in console
    assert "LOAD REPORT" not in console and "MISSING" not in console
    assert says(res.err, f"done {run_id}", "finetune", "1/1", "eta", "library messages:")


def test_verbose_shows_library_output_live_and_still_logs_it(tmp_path: Path, glue_dir: Path
                                                             ) -> None:
    """`peftlab --verbose run`: the base's LOAD REPORT (a causal LM loaded as a classifier by the
    baselines stage) is on the console, labelled with stage and unit, and in log.txt as well."""
    from peftlab.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "base", lm_head=True)
    path = write_spec(tmp_path / "spec.yaml",
                      spec_for(tmp_path, model, train_samples=16, eval_samples=8))
    # (without --verbose: test_run_keeps_library_output_in_the_study_log)
    loud = cli("--verbose", "run", path, "--stages", "data,baselines", "--data-dir", glue_dir)
    assert loud.code == 0, loud.err
    shown = [line for line in loud.err.splitlines() if line.startswith("[baselines sst2] ")]
    assert any("LOAD REPORT" in line for line in shown), loud.err
    log = (tmp_path / "study" / "log.txt").read_text().splitlines()
    for line in shown:  # every line shown live is in the log, under the same label
        assert any(squash(entry).endswith(squash(line)) for entry in log), line  # rich: tabs


# -- a stage the spec does not configure ---------------------------------------------------------


@pytest.mark.parametrize("command, edit, expected", [
    (["search"], None, ["search: not configured", "no `search:` block", "`peftlab search`"]),
    (["forgetting"], {"forgetting": {"enabled": False}},
     ["forgetting.enabled: false", "`peftlab forgetting`"]),
    (["run", "--stages", "data,search"], None, ["search: not configured",
                                                "`peftlab run --stages data,search`"]),
])
def test_a_stage_the_spec_does_not_configure_is_an_error_and_writes_nothing(
        tmp_path: Path, tiny_llama_dir: Path, glue_dir: Path, command: list[str],
        edit: dict[str, Any] | None, expected: list[str]) -> None:
    """Asked by name for a stage the spec leaves out (no `search:` block) or turns off
    (forgetting.enabled: false): one error naming the spec key, exit 2, no study directory.
    (On main: "nothing to search", exit 0, and results.sqlite and spec.yaml written.)"""
    spec = spec_for(tmp_path, tiny_llama_dir)
    spec.update(edit or {})
    path = write_spec(tmp_path / "spec.yaml", spec)
    failed(cli(*command, path, "--data-dir", glue_dir), str(path), *expected)
    assert not (tmp_path / "study").exists()


def test_the_pipeline_still_skips_stages_the_spec_does_not_configure(
        tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`peftlab run` without --stages runs every stage; those the spec leaves out skip quietly
    (the stages' own `run` does that; here: the command hands them all to run_stages)."""
    ran: list[Any] = []
    monkeypatch.setattr("peftlab.pipeline.run_stages",
                        lambda study, stages=None, **kw: ran.append(stages))
    spec = spec_for(tmp_path, tiny_llama_dir)
    spec["forgetting"] = {"enabled": False}
    res = cli("run", write_spec(tmp_path / "spec.yaml", spec))
    assert res.code == 0, res.err
    assert ran == [None]


# -- arguments are checked before any data or model is loaded ------------------------------------


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the evaluation data of a one-off bench, or checking a study's data and model
    (`deep_check`, the first thing every stage does), fails the test: an argument error must
    come before either."""
    def loaded(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data or a model was loaded before the arguments were checked")

    monkeypatch.setattr("peftlab.bench.oneoff._task_info", loaded)
    monkeypatch.setattr("peftlab.validate.deep_check", loaded)
    monkeypatch.delenv("PEFTLAB_DATA_DIR", raising=False)


def test_one_off_bench_checks_its_arguments_before_loading_anything(
        tmp_path: Path, tiny_llama_dir: Path, no_loading: None) -> None:
    """`peftlab bench --model M --adapter A` without --data-dir (the data would come from the
    hub): a missing adapter, a file given as an adapter, an unknown model or task, a missing
    --data-dir and an --output-dir (a one-off writes no study) are each named in one error.
    (On main the first three failed on loading sst2 from the hub, naming the hub dataset.)"""
    afile = tmp_path / "notes.txt"
    afile.write_text("not an adapter")
    missing = tmp_path / "nowhere"
    failed(cli("bench", "--model", tiny_llama_dir, "--adapter", missing),
           "adapter 'nowhere'", str(missing), "does not exist")
    failed(cli("bench", "--model", "minilm", "--adapter", missing), "adapter 'nowhere'")
    failed(cli("bench", "--model", tiny_llama_dir, "--adapter", afile), str(afile), "is a file")
    failed(cli("bench", "--model", "no-such-model"), "unknown model 'no-such-model'")
    failed(cli("bench", "--model", tiny_llama_dir, "--task", "no-such-task"),
           "unknown task 'no-such-task'")
    failed(cli("bench", "--model", tiny_llama_dir, "--data-dir", missing),
           f"--data-dir {missing}: no such folder")
    failed(cli("bench", "--model", tiny_llama_dir, "--output-dir", tmp_path / "out"),
           "--output-dir", "one-off")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "data", "run", "baselines", "finetune", "bench"])
def test_study_commands_check_data_and_output_folders_before_loading_anything(
        tmp_path: Path, tiny_llama_dir: Path, no_loading: None, command: str) -> None:
    """--data-dir that is not a folder, and (commands that write the study) an output folder
    under a file: one error naming it, before data or the model is read."""
    path = write_spec(tmp_path / "spec.yaml", spec_for(tmp_path, tiny_llama_dir))
    missing = tmp_path / "no-glue"
    failed(cli(command, path, "--data-dir", missing), f"--data-dir {missing}: no such folder")
    failed(cli(command, path, "--data-dir", path), f"--data-dir {path}: is a file")
    if command not in ("validate", "data"):
        blocker = tmp_path / "afile"
        blocker.write_text("a regular file")
        failed(cli(command, path, "--output-dir", blocker / "study", "--data-dir", tmp_path),
               str(blocker / "study"), "not writable", f"{blocker} is a file")


def test_sigterm_unwinds_like_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`kill PID` (a scheduler's or a container's stop) mid-stage: the stage is recorded as
    interrupted, not lost, and `peftlab` exits 143 with one line saying a rerun resumes."""
    import signal
    import time

    from peftlab import cli as cli_module
    from peftlab.pipeline import _stage_time

    store = Store(tmp_path / "study")

    def app(**_: Any) -> None:  # stands for a stage in progress when the signal comes
        with _stage_time(store, "s-1", 3, "finetune"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        raise AssertionError("SIGTERM did not stop the stage")

    monkeypatch.setattr(cli_module, "app", app)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_module.main()
        record = store.get("stage_times", "s-1/03-finetune")
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.close()
    assert exit_info.value.code == 143
    assert record["status"] == "interrupted" and record["seconds"] < 30
    assert capsys.readouterr().err.strip().startswith("terminated (SIGTERM)")
