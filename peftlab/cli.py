"""The `peftlab` command: thin subcommands over library functions.

    peftlab run                      # the quickstart study (studies/quickstart.yaml)
    peftlab run SPEC --data-dir ../shared/data/glue
    peftlab validate SPEC | plan SPEC [--json] | data SPEC [--json]
    peftlab results STUDY_DIR --table runs [--format csv|json]

Every error a user can cause ends in one message on stderr and exit code 2 (`--debug` shows the
traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from peftlab.errors import PeftlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure how far PEFT and full fine-tuning move a model, and what each "
                       "deployment strategy costs.")
# Piped output is not wrapped at 80 columns: lines stay whole and tables stay readable.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
_DEBUG = {"on": False}

QUICKSTART = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"

SpecArg = Annotated[Path, typer.Argument(help="Study spec (YAML).", show_default=False)]
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="Local GLUE folder (<dir>/SST-2/train.tsv, ...); or set PEFTLAB_DATA_DIR.")]
OutputDir = Annotated[Path | None, typer.Option(
    "--output-dir", help="Study directory (overrides the spec's output_dir).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _DEBUG["on"] = debug


def _load(spec: Path, data_dir: Path | None = None, output_dir: Path | None = None):
    from peftlab.spec import load_spec

    return load_spec(spec, data_dir=str(data_dir) if data_dir else None,
                     output_dir=str(output_dir) if output_dir else None)


@app.command()
def validate(spec: SpecArg, data_dir: DataDir = None) -> None:
    """Check a spec: keys, types, tasks, methods, overrides, and every run it resolves to."""
    from peftlab.validate import deep_check

    study = _load(spec, data_dir)
    notes = deep_check(study)
    for n in notes:
        err.print(f"[yellow]note:[/] {n}")
    out.print(f"[green]ok[/]: {spec} ({len(study.runs())} training runs)")


@app.command()
def plan(spec: SpecArg, json_out: JsonFlag = False, output_dir: OutputDir = None) -> None:
    """List every training run the study implies, its id, and whether it is done."""
    from peftlab.study import plan as make_plan

    study = _load(spec, output_dir=output_dir)
    rows = make_plan(study)
    if json_out:
        print(json.dumps({"study": study.spec.name, "output_dir": str(study.output_dir),
                          "runs": rows}, indent=2))
        return
    table = Table(title=f"{study.spec.name}: {len(rows)} training runs -> {study.output_dir}")
    for col in ("run_id", "task", "method", "seed", "status"):
        table.add_column(col)
    for r in rows:
        status = r["status"] + (f" ({r['reason']})" if r.get("reason") else "")
        table.add_row(r["run_id"], r["task"], r["method"], str(r["seed"]), status)
    out.print(table)
    done = sum(r["status"] == "done" for r in rows)
    out.print(f"{done} done, {len(rows) - done} to do")


@app.command()
def data(spec: SpecArg, data_dir: DataDir = None, json_out: JsonFlag = False) -> None:
    """Load every task's data and print row and label counts per split."""
    from peftlab.data import StudyData

    study = _load(spec, data_dir)
    rows = [{"task": r["task"], "split": r["split"], "rows": r["rows"],
             "rows_used": r["rows_used"],
             **{k: v for k, v in r["describe"].items() if k != "rows"}}
            for r in StudyData(study).summaries()]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{study.spec.name}: data")
    for col in ("task", "split", "rows", "used", "labels"):
        table.add_column(col, justify="right" if col in ("rows", "used") else "left")
    for r in rows:
        labels = r.get("label_counts") or {k: r[k] for k in ("min", "mean", "max") if k in r}
        table.add_row(r["task"], r["split"], f"{r['rows']:,}", f"{r['rows_used']:,}",
                      ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v:.3g}"
                                for k, v in labels.items()))
    out.print(table)


@app.command()
def run(
    spec: Annotated[Path | None, typer.Argument(
        help="Study spec; default: the quickstart study.", show_default=False)] = None,
    data_dir: DataDir = None,
    output_dir: OutputDir = None,
    stages: Annotated[str | None, typer.Option(
        "--stages", help="Comma-separated subset of stages to run, in pipeline order.")] = None,
) -> None:
    """Run the whole pipeline on a study, skipping work that is already done."""
    from peftlab.study import run_stages

    study = _load(spec or QUICKSTART, data_dir, output_dir)
    names = [s.strip() for s in stages.split(",")] if stages else None
    run_stages(study, names, console=err)
    report = study.output_dir / "report.html"
    out.print(f"study directory: {study.output_dir}")
    if report.is_file():
        out.print(f"report: {report}")


@app.command()
def results(
    study_dir: Annotated[Path, typer.Argument(help="A study directory.", show_default=False)],
    table: Annotated[str, typer.Option("--table", help="Results table, e.g. runs, drift.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json or table.")] = "table",
) -> None:
    """Print a results table of a study directory."""
    from peftlab.errors import StoreError
    from peftlab.store import Store

    if fmt not in ("csv", "json", "table"):
        raise StoreError(f"--format: expected csv, json or table, got {fmt!r}")
    store = Store(study_dir, create=False)
    names = store.tables()
    if table not in names:
        raise StoreError(f"{study_dir}: no results table {table!r}; tables present: {names}")
    if fmt == "json":
        print(json.dumps(store.records(table), indent=2))
        return
    df = store.table(table)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
        return
    t = Table(title=f"{table} ({len(df)} rows)")
    cols = [c for c in df.columns if not c.startswith("provenance.")][:12]
    for c in cols:
        t.add_column(c, overflow="fold")
    for _, r in df[cols].iterrows():
        t.add_row(*[_short(v) for v in r])
    out.print(t)


def _short(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _stage_command(stage: str, doc: str) -> None:
    def command(spec: SpecArg, data_dir: DataDir = None, output_dir: OutputDir = None) -> None:
        from peftlab.study import run_stages

        run_stages(_load(spec, data_dir, output_dir), [stage], console=err)

    command.__doc__ = doc
    app.command(name=stage)(command)


for _name, _doc in {
    "finetune": "Train and evaluate every run that is not done yet.",
    "represent": "Extract pooled per-layer hidden states of the base and every finished run.",
    "drift": "Similarity to the base per layer (with null floors and seed-to-seed controls) "
             "and weight-space analysis.",
    "stats": "Paired tests, effect sizes, corrections and equivalence tests over the results.",
    "report": "Write report.md and a self-contained report.html into the study directory.",
}.items():
    _stage_command(_name, _doc)


@app.command()
def bench(
    spec: Annotated[Path | None, typer.Argument(
        help="Study spec: benchmark the study's trained runs.", show_default=False)] = None,
    data_dir: DataDir = None,
    output_dir: OutputDir = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="One-off: base model (alias, hub id, folder).")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", help="One-off: a PEFT adapter or full-model folder (repeatable).")] = None,
    mode: Annotated[list[str] | None, typer.Option(
        "--mode", help="One-off: modes to run (repeatable); default: what the adapters allow.")
    ] = None,
    batch_size: Annotated[list[int], typer.Option("--batch-size")] = [1, 8, 32],  # noqa: B006
    seq_length: Annotated[list[str], typer.Option(
        "--seq-length", help="'data' or a token count (repeatable).")] = ["data"],  # noqa: B006
    task: Annotated[str, typer.Option("--task", help="One-off: requests from this task.")]
    = "sst2",
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    min_iterations: Annotated[int, typer.Option("--min-iterations")] = 50,
    min_seconds: Annotated[float, typer.Option("--min-seconds")] = 2.0,
    json_out: JsonFlag = False,
) -> None:
    """Deployment benchmark: a study's runs (SPEC), or a one-off (--model M --adapter A ...)."""
    from peftlab.errors import SpecError

    if spec is not None:
        if model or adapter:
            raise SpecError("peftlab bench: give a SPEC or --model/--adapter, not both")
        from peftlab.study import run_stages

        run_stages(_load(spec, data_dir, output_dir), ["bench"], console=err)
        return
    if not model or not adapter:
        raise SpecError("peftlab bench: give a SPEC, or --model M and at least one --adapter A")
    from peftlab.bench import bench_oneoff

    lengths: list[int | str] = []
    for s in seq_length:
        if s == "data":
            lengths.append(s)
        elif s.isdigit():
            lengths.append(int(s))
        else:
            raise SpecError(f"--seq-length: expected 'data' or a token count, got {s!r}")
    records = bench_oneoff(model, adapter, mode or None, batch_sizes=batch_size,
                           seq_lengths=lengths, task=task,
                           data_dir=str(data_dir) if data_dir else None, threads=threads,
                           min_iterations=min_iterations, min_seconds=min_seconds, console=err)
    if json_out:
        print(json.dumps(records, indent=2, default=str))
        return
    table = Table(title=f"bench {model}")
    for col in ("mode", "batch", "seq", "status", "p50 ms", "p95 ms", "p99 ms", "req/s"):
        table.add_column(col)
    for r in records:
        lat, thr = r.get("latency_ms") or {}, r.get("throughput") or {}
        table.add_row(str(r.get("mode_key", r.get("mode"))), str(r.get("batch_size")),
                      str(r.get("seq_len")), str(r.get("status")),
                      *[f"{lat[k]:.3f}" if lat.get(k) is not None else "-"
                        for k in ("p50", "p95", "p99")],
                      f"{thr['requests_per_s']:.1f}" if thr.get("requests_per_s") else "-")
    out.print(table)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers prints a load report and progress bars for every model it loads (dozens per
    # study); peftlab records what it loaded, so only transformers' errors are shown.
    if "--debug" not in sys.argv:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        import warnings

        # raised inside peft 0.21 on transformers 5 at every training step, not by peftlab
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    try:
        app(standalone_mode=False)
    except PeftlabError as e:
        if _DEBUG["on"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code (2)
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
