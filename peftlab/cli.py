"""The `peftlab` command: thin subcommands over library functions.

    peftlab run                      # the shipped quickstart study
    peftlab run SPEC --data-dir ../shared/data/glue
    peftlab run SPEC --executor ray [--address auto]   # units as Ray tasks (peftlab.execution)
    peftlab init my-study [--from quickstart]     # a starter spec to edit: my-study.yaml
    peftlab validate SPEC | plan SPEC [--json] | data SPEC [--json]
    peftlab results STUDY_DIR [--table runs] [--format csv|json]
    peftlab baselines|search|finetune|represent|forgetting|drift|bench|stats|report SPEC
                                     # one stage of the pipeline (`peftlab data` prints the data)

SPEC is a YAML file or the name of a shipped spec (`quickstart`, `tinyllama-glue`). Every error a
user can cause, including a missing or malformed argument, ends in one `error:` message on stderr
and exit code 2 (`--debug` shows the traceback). Library warnings go to the study's log.txt
(`--verbose` also shows them).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from peftlab import logs
from peftlab.errors import PeftlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure how far PEFT and full fine-tuning move a model, and what each "
                       "deployment strategy costs.")
# Piped output is not wrapped at 80 columns: lines stay whole and tables stay readable.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
_DEBUG = {"on": False}

SpecArg = Annotated[Path, typer.Argument(
    help="Study spec: a YAML file, or the name of a shipped spec (quickstart, tinyllama-glue).",
    show_default=False, metavar="SPEC")]
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="Local GLUE folder (<dir>/SST-2/train.tsv, ...); or set PEFTLAB_DATA_DIR.")]
OutputDir = Annotated[Path | None, typer.Option(
    "--output-dir", help="Study directory (overrides the spec's output_dir).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show library warnings and logs live (always in log.txt).")
    ] = False,
) -> None:
    _DEBUG["on"] = debug
    # For the whole command: library output stays off the console (a study's stages log it to
    # <study dir>/log.txt; commands without a study directory drop it unless --verbose).
    ctx.with_resource(logs.capture(None, console=err, verbose=verbose))


def _load(spec: Path, data_dir: Path | None = None, output_dir: Path | None = None):
    from peftlab.pipeline import load_study

    _check_data_dir(data_dir)
    return load_study(spec, data_dir=str(data_dir) if data_dir else None,
                     output_dir=str(output_dir) if output_dir else None)


# -- arguments are checked before any data or model is loaded --------------------------------


def _check_data_dir(data_dir: Path | None, where: str = "--data-dir") -> None:
    """A data folder named on the command line (or in PEFTLAB_DATA_DIR) exists and is a folder."""
    if data_dir is None:
        return
    from peftlab.errors import SpecError

    if not data_dir.exists():
        raise SpecError(f"{where} {data_dir}: no such folder; expected a local GLUE folder "
                        "(<dir>/SST-2/train.tsv, ...)")
    if not data_dir.is_dir():
        raise SpecError(f"{where} {data_dir}: is a file; expected a local GLUE folder "
                        "(<dir>/SST-2/train.tsv, ...)")


def _check_output_dir(study) -> None:
    """The study directory is a folder that exists or can be created, and is writable by us.

    The store checks this again when it opens (by writing); this check comes before a command
    loads data or models, so a bad output_dir or --output-dir costs no loading time.
    """
    from peftlab.errors import StoreError

    root = Path(study.output_dir).absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        why = "it is a file" if existing == root else f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"permission denied on {existing}"
    else:
        return
    raise StoreError(f"{study.output_dir}: the study directory is not writable ({why}); choose "
                     "another output_dir or --output-dir")


def _check_stages(study, names: list[str], command: str) -> None:
    """Each stage named is known and configured by the spec: a stage the spec turns off or
    leaves out (`unconfigured` of its module, e.g. no `search:` block) is refused, where the
    pipeline without --stages skips it."""
    import importlib

    from peftlab.errors import SpecError
    from peftlab.pipeline import stage_function

    for name in names:
        stage_function(name)  # an unknown name fails here
    for name in names:
        check = getattr(importlib.import_module(f"peftlab.stages.{name}"), "unconfigured", None)
        reason = check(study) if check is not None else None
        if reason:
            raise SpecError(f"{reason}; `{command}` has nothing to do (the pipeline, `peftlab "
                            f"run` without --stages, skips the {name} stage)")


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
    from peftlab.families import planned_families
    from peftlab.pipeline import plan as make_plan

    study = _load(spec, output_dir=output_dir)
    rows = make_plan(study)
    families = planned_families(study)  # the comparisons the spec implies, per family
    if json_out:
        print(json.dumps({"study": study.spec.name, "output_dir": str(study.output_dir),
                          "runs": rows, "families": families}, indent=2))
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
    out.print(f"comparisons planned: {sum(families.values())}, corrected per family "
              f"({study.spec.stats.correction}): "
              + ", ".join(f"{name} {n}" for name, n in families.items()))


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
    spec: Annotated[Path, typer.Argument(
        help="Study spec: a YAML file or a shipped spec's name.", metavar="SPEC")
    ] = Path("quickstart"),
    data_dir: DataDir = None,
    output_dir: OutputDir = None,
    stages: Annotated[str | None, typer.Option(
        "--stages", help="Comma-separated subset of stages to run, in pipeline order.")] = None,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="Where training runs, search trials and extraction run: local or "
                           "ray (default: the spec's execution.backend).")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster to join: auto, host:port or ray://... (default: the "
                          "spec's execution.address; none starts Ray on this machine).")] = None,
) -> None:
    """Run the whole pipeline on a study, skipping work that is already done.

    Library warnings and load reports go to <study dir>/log.txt.
    """
    from peftlab.errors import SpecError
    from peftlab.execution import check_executor
    from peftlab.pipeline import run_stages

    if executor is not None and executor not in ("local", "ray"):
        raise SpecError(f"--executor: expected local or ray, got {executor!r}")
    study = _load(spec, data_dir, output_dir)
    names = [s.strip() for s in stages.split(",")] if stages else None
    if names is not None:  # asked for by name: each must be one the spec configures
        _check_stages(study, names, f"peftlab run --stages {stages}")
    _check_output_dir(study)
    # an unreachable Ray cluster fails here, within execution.connect_timeout_s, before the
    # study directory is written
    check_executor(study.spec.execution, backend=executor, address=address)
    run_stages(study, names, console=err, executor=executor, address=address)
    report = study.output_dir / "report.html"
    out.print(f"study directory: {study.output_dir}")
    if report.is_file():
        out.print(f"report: {report}")


@app.command()
def results(
    study_dir: Annotated[Path, typer.Argument(
        help="A study directory.", show_default=False, metavar="STUDY_DIR")],
    table: Annotated[str | None, typer.Option(
        "--table", help="Results table, e.g. runs, drift; without it: list the tables.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, json or table.")] = "table",
) -> None:
    """Print a results table of a study directory (without --table: which tables it has)."""
    from peftlab.errors import StoreError
    from peftlab.store import Store

    if fmt not in ("csv", "json", "table"):
        raise StoreError(f"--format: expected csv, json or table, got {fmt!r}")
    store = Store(study_dir, create=False)
    names = store.tables()
    if table is None:
        counts = {name: len(store.keys(name)) for name in names}
        if fmt == "json":
            print(json.dumps({"study_dir": str(study_dir), "tables": counts}, indent=2))
        elif fmt == "csv":
            sys.stdout.write("table,rows\n" + "".join(f"{n},{c}\n" for n, c in counts.items()))
        else:
            t = Table(title=f"{study_dir}: {len(counts)} results tables")
            t.add_column("table")
            t.add_column("rows", justify="right")
            for name, count in counts.items():
                t.add_row(name, f"{count:,}")
            out.print(t)
            out.print(f"show one: peftlab results {study_dir} --table NAME")
        return
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


@app.command()
def init(
    name: Annotated[str, typer.Argument(
        help="The new study's name; the spec is written to NAME.yaml (NAME may be a path).",
        metavar="NAME")] = "my-study",
    template: Annotated[str, typer.Option(
        "--from", help="The shipped spec to start from (quickstart, tinyllama-glue, ...).")
    ] = "quickstart",
) -> None:
    """Write a starter spec (a copy of a shipped one, renamed) to edit; never overwrites."""
    from peftlab.errors import SpecError
    from peftlab.spec import shipped_specs
    from peftlab.starter import starter_spec

    shipped = shipped_specs()
    if template not in shipped:
        raise SpecError(f"--from: no shipped spec {template!r}; shipped specs: "
                        f"{', '.join(shipped)}")
    target = Path(name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if target.exists():
        raise SpecError(f"{target}: already exists; choose another NAME or remove it "
                        "(peftlab init never overwrites)")
    if not target.parent.is_dir():
        raise SpecError(f"{target}: folder {target.parent} does not exist")
    text = starter_spec(shipped[template], target)
    with open(target, "x", encoding="utf-8") as f:  # "x": refuses a file created meanwhile
        f.write(text)
    out.print(f"wrote {target} (from the shipped spec {template!r}); edit it, then:")
    out.print(f"  peftlab validate {target}")
    out.print(f"  peftlab run {target}")


def _short(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _stage_command(stage: str, doc: str) -> None:
    def command(spec: SpecArg, data_dir: DataDir = None, output_dir: OutputDir = None) -> None:
        from peftlab.pipeline import run_stages

        study = _load(spec, data_dir, output_dir)
        _check_stages(study, [stage], f"peftlab {stage}")  # before the study directory is written
        _check_output_dir(study)
        run_stages(study, [stage], console=err)

    command.__doc__ = doc
    app.command(name=stage)(command)


for _name, _doc in {
    "baselines": "Majority-class, chance and untrained-head baselines per task (what runs must "
                 "beat).",
    "search": "Hyperparameter search per task and method (the spec's `search:` block).",
    "finetune": "Train and evaluate every run that is not done yet.",
    "represent": "Extract pooled per-layer hidden states of the base and every finished run.",
    "forgetting": "Off-task probe accuracy and held-out LM loss of every run against the base.",
    "drift": "Similarity to the base per layer (with null floors and seed-to-seed controls) "
             "and weight-space analysis.",
    "serve": "Serve the study's models on a real engine (vLLM) under open-loop load (the spec's "
             "`engine:` block; scripts/build-engine-env.sh builds the engine's environment).",
    "stats": "Paired tests, effect sizes, corrections and equivalence tests over the results.",
    "report": "Write report.md and a self-contained report.html into the study directory.",
}.items():
    _stage_command(_name, _doc)


def _bench_default(name: str):
    """A `bench` spec field's default: the one-off command's options share the study's."""
    from peftlab.spec import BenchSpec

    field = BenchSpec.model_fields[name]
    return field.default_factory() if field.default_factory is not None else field.default


@app.command()
def bench(
    spec: Annotated[Path | None, typer.Argument(
        help="Study spec (file or shipped name): benchmark the study's trained runs.",
        show_default=False, metavar="SPEC")] = None,
    data_dir: DataDir = None,
    output_dir: OutputDir = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="One-off: base model (alias, hub id, folder).")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", help="One-off: a PEFT adapter or full-model folder (repeatable).")] = None,
    head: Annotated[str, typer.Option(
        "--head", help="One-off: the classifier head (model.head): sequence-classification, "
        "sentence-embedding, or auto (what the adapters were trained with).")] = "auto",
    mode: Annotated[list[str] | None, typer.Option(
        "--mode", help="One-off: modes to run (repeatable); default: what the adapters allow.")
    ] = None,
    batch_size: Annotated[list[int] | None, typer.Option(
        "--batch-size", help=f"Repeatable; default {_bench_default('batch_sizes')}.")] = None,
    seq_length: Annotated[list[str] | None, typer.Option(
        "--seq-length", help="'data' or a token count (repeatable); default "
                             f"{_bench_default('seq_lengths')}.")] = None,
    task: Annotated[str, typer.Option("--task", help="One-off: requests from this task.")]
    = "sst2",
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads; default: all cores.")] = _bench_default("threads"),
    warmup: Annotated[int, typer.Option("--warmup")] = _bench_default("warmup"),
    min_iterations: Annotated[int, typer.Option(
        "--min-iterations")] = _bench_default("min_iterations"),
    min_seconds: Annotated[float, typer.Option("--min-seconds")] = _bench_default("min_seconds"),
    max_seconds: Annotated[float, typer.Option("--max-seconds")] = _bench_default("max_seconds"),
    json_out: JsonFlag = False,
) -> None:
    """Deployment benchmark: a study's runs (SPEC), or a one-off (--model M [--adapter A ...]).

    One-off options default to a study's `bench` defaults; with --model alone the base model is
    benchmarked (mode base)."""
    from peftlab.errors import SpecError

    if spec is not None:
        if model or adapter:
            raise SpecError("peftlab bench: give a SPEC or --model/--adapter, not both")
        from peftlab.pipeline import run_stages

        study = _load(spec, data_dir, output_dir)
        _check_stages(study, ["bench"], "peftlab bench")
        _check_output_dir(study)
        run_stages(study, ["bench"], console=err)
        return
    if not model:
        raise SpecError("peftlab bench: give a SPEC, or --model M (and --adapter A, repeatable)")
    if output_dir is not None:
        raise SpecError("--output-dir: a one-off bench (--model) writes no study directory; "
                        "it prints its results (--json for all of them)")
    if data_dir is not None:
        _check_data_dir(data_dir)
    elif os.environ.get("PEFTLAB_DATA_DIR"):  # as the study commands read it
        data_dir = Path(os.environ["PEFTLAB_DATA_DIR"])
        _check_data_dir(data_dir, "PEFTLAB_DATA_DIR")
    from peftlab.bench import bench_oneoff
    from peftlab.spec import BenchSpec, ModelSpec, build_section

    lengths: list[int | str] | None = None
    if seq_length:
        lengths = []
        for s in seq_length:
            if s == "data":
                lengths.append(s)
            elif s.isdigit():
                lengths.append(int(s))
            else:
                raise SpecError(f"--seq-length: expected 'data' or a token count, got {s!r}")
    given = {"batch_sizes": batch_size or None, "seq_lengths": lengths, "threads": threads,
             "warmup": warmup, "min_iterations": min_iterations, "min_seconds": min_seconds,
             "max_seconds": max_seconds}
    bench_spec = build_section(BenchSpec, "peftlab bench",
                               **{k: v for k, v in given.items() if v is not None})
    if head == "auto":
        from peftlab.sentence_embedding import saved_head

        head = saved_head(adapter or [])
    model_spec = build_section(ModelSpec, "peftlab bench --model", name=model, head=head)
    records = bench_oneoff(model_spec, bench_spec, adapter or [], modes=mode or None, task=task,
                           data_dir=str(data_dir) if data_dir else None, console=err)
    if json_out:
        print(json.dumps(records, indent=2, default=str))
        return
    table = Table(title=f"bench {model}")
    for col in ("mode", "batch", "seq", "status", "p50 ms", "p95 ms", "p99 ms",
                "req/s at concurrency 1"):
        table.add_column(col)
    for r in records:
        lat, thr = r.get("latency_ms") or {}, r.get("throughput") or {}
        table.add_row(str(r.get("mode_key", r.get("mode"))), str(r.get("batch_size")),
                      str(r.get("seq_len")), str(r.get("status")),
                      *[f"{lat[k]:.3f}" if lat.get(k) is not None else "-"
                        for k in ("p50", "p95")],
                      # p99 only from >= 100 requests (bench.timing.latency_stats)
                      lat.get("p99_note") or (f"{lat['p99']:.3f}" if lat.get("p99") is not None
                                              else "-"),
                      f"{thr['requests_per_s']:.1f}" if thr.get("requests_per_s") else "-")
    out.print(table)


def _click_exceptions():
    """The click exception classes typer raises (typer >= 0.20 vendors click as typer._click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: the click package itself
        from click import exceptions
    return exceptions


def _usage_error(e: Exception) -> int:
    """Print a usage problem as the command's usage line and one `error:` line; exit code 2."""
    ctx = getattr(e, "ctx", None) or _command_context(sys.argv[1:])
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    print(f"error: {e.format_message()}{hint}", file=sys.stderr)
    return 2


def _command_context(args: list[str]):
    """A context for the subcommand named in `args` (for its usage line), or the group's.

    Some parser errors (an option missing its value) come without a context.
    """
    group = typer.main.get_command(app)
    try:
        ctx = group.make_context("peftlab", [], resilient_parsing=True)
        name = next((a for a in args if a in group.commands), None)  # type: ignore[attr-defined]
        if name is None:
            return ctx
        return group.commands[name].make_context(  # type: ignore[attr-defined]
            name, [], parent=ctx, resilient_parsing=True)
    except Exception:  # noqa: BLE001  (only a usage line is at stake)
        return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's or a container's stop) unwinds like Ctrl-C: each stage
    records itself interrupted, finished runs, trials and blocks stay stored, and the next
    `peftlab run` resumes. Python's default for SIGTERM kills at once, skipping that
    bookkeeping; and a study started in the background of a script ignores SIGINT."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Progress bars of the libraries are neither peftlab's progress nor messages worth a log line.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    exc = _click_exceptions()
    try:
        app(standalone_mode=False, prog_name="peftlab")
    except PeftlabError as e:
        if _DEBUG["on"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Terminated:
        print("terminated (SIGTERM); `peftlab run` resumes where it stopped", file=sys.stderr)
        sys.exit(143)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except exc.NoArgsIsHelpError as e:  # `peftlab` alone: the overview, on stdout
        print(e.ctx.get_help())
        sys.exit(0)
    except exc.UsageError as e:  # missing/unknown/malformed arguments: usage + one error line
        if _DEBUG["on"]:
            raise
        sys.exit(_usage_error(e))
    except exc.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
