"""Where library messages go: the study's `log.txt`, not the console.

    with capture(study_dir / "log.txt", console=console):
        with stage("finetune"):
            for rc in track(console, "finetune", runs, label=lambda rc: rc.run_id):
                ...  # whatever the libraries say here is logged as [finetune <run id>]

The console shows peftlab's own lines and its progress bars. What the libraries say (Python
warnings, the logging of transformers, datasets, peft and the rest, e.g. transformers' LOAD
REPORT tables, and anything else written to `sys.stderr`) goes to the log, one line each, stamped
with the time, the stage and the unit of work:

    2025-06-01 12:00:00 [finetune sst2-lora-s42-845ab87d] FutureWarning: ... (transformers/...:3312)

`verbose` also shows those lines live on the console. Bench unit processes write to the same log
under their own label (`child_settings` in the parent, `capture_child` in the unit process), and
`from_child` takes what a helper process writes to a pipe.

Captures nest (the command line opens one without a file for the whole command, `run_stages` one
with the study's log.txt): the innermost decides where lines go. Outside any capture nothing is
redirected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

LOG_NAME = "log.txt"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes (transformers bolds its reports)
# A child's line that it has logged itself and sends to the parent only to be shown (verbose).
_SHOWN = "\x02"  # not a line boundary for str.splitlines (\x1c-\x1e are)


@dataclass
class _Sink:
    file: IO[str] | None  # None: library lines are dropped (unless verbose)
    path: Path | None
    verbose: bool
    console: Any = None  # a rich Console writing to the real stderr: where verbose lines show
    show: IO[str] | None = None  # else: a plain stream for them
    stage: str = ""
    unit: str = ""
    fixed_label: str | None = None  # a unit process: its label is given by the parent
    owned: bool = True  # close `file` at the end of the capture
    lines: int = 0  # lines written to `file` so far
    pinned: list[tuple[Any, Any]] = field(default_factory=list)

    def label(self) -> str:
        if self.fixed_label is not None:
            return self.fixed_label
        return " ".join(p for p in (self.stage, self.unit) if p) or "peftlab"


_STACK: list[_Sink] = []
_LOCK = threading.RLock()
_SAVED: dict[str, Any] = {}  # what the outermost capture replaced, restored when it ends


class _Router(io.TextIOBase):
    """Stands in for `sys.stderr` during a capture: complete lines go to the active sink.

    Libraries bind `sys.stderr` when they create their handlers (transformers does so at import),
    so one router object lives for the whole process; outside a capture it writes through to
    whatever `sys.stderr` is then.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buf = ""

    @staticmethod
    def _through() -> Any:
        return sys.stderr if sys.stderr is not _ROUTER else _SAVED.get("stderr", sys.__stderr__)

    def write(self, s: str) -> int:
        if not _STACK:
            return self._through().write(s)
        with _LOCK:
            self._buf += s
            if "\n" in self._buf:
                text, self._buf = self._buf.rsplit("\n", 1)
                emit(text)
        return len(s)

    def drain(self) -> None:
        with _LOCK:
            text, self._buf = self._buf, ""
        if text.strip():
            emit(text)

    def flush(self) -> None:
        if not _STACK:
            self._through().flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # for code that hands fd 2 on (faulthandler, subprocesses)
        return _SAVED.get("stderr", sys.__stderr__).fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_ROUTER = _Router()


def _short_path(filename: str) -> str:
    marker = f"site-packages{os.sep}"
    return filename.split(marker, 1)[1] if marker in filename else filename


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: IO[str] | None = None, line: str | None = None) -> None:
    if file is not None and file not in (sys.stderr, _ROUTER, _SAVED.get("stderr")):
        _SAVED["showwarning"](message, category, filename, lineno, file, line)
        return
    emit(f"{category.__name__}: {message} ({_short_path(filename)}:{lineno})")


def _install() -> None:
    """Point sys.stderr, warnings and existing stderr logging handlers at the router."""
    _SAVED["stderr"] = sys.stderr
    _SAVED["showwarning"] = warnings.showwarning
    sys.stderr = _ROUTER
    warnings.showwarning = _showwarning
    # Plain StreamHandlers (what transformers, datasets and logging.basicConfig create) are bound
    # to the stderr of the moment they were made, which may be long replaced; subclasses (file
    # handlers, pytest's capture) and handlers writing to stdout keep their streams.
    handlers = []
    stdout = {id(sys.stdout), id(sys.__stdout__)}
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and id(h.stream) not in stdout:
                handlers.append((h, _swap_stream(h, _ROUTER)))
    _SAVED["handlers"] = handlers


def _swap_stream(handler: logging.StreamHandler, stream: Any) -> Any:
    # not setStream(): it flushes the old stream, which may be closed by now
    handler.acquire()
    try:
        old, handler.stream = handler.stream, stream
    finally:
        handler.release()
    return old


def _uninstall() -> None:
    _ROUTER.drain()
    for h, stream in _SAVED.pop("handlers", []):
        if h.stream is _ROUTER:
            _swap_stream(h, stream)
    warnings.showwarning = _SAVED.pop("showwarning")
    sys.stderr = _SAVED.pop("stderr")


def _push(sink: _Sink) -> None:
    with _LOCK:
        if not _STACK:
            _install()
        else:
            _ROUTER.drain()
        _STACK.append(sink)


def _pop(sink: _Sink) -> None:
    with _LOCK:
        _ROUTER.drain()
        _STACK.remove(sink)
        if not _STACK:
            _uninstall()
    for console, previous in sink.pinned:
        console.file = previous
    if sink.file is not None and sink.owned:
        sink.file.close()


@contextlib.contextmanager
def capture(path: str | os.PathLike[str] | None, *, console: Any = None,
            verbose: bool | None = None) -> Iterator[_Sink]:
    """Send library messages to `path` (appended; None: nowhere) while the block runs.

    `console` (a rich Console) keeps writing to the real stderr and shows the lines when
    `verbose` (None: as the enclosing capture says, else False). Yields the sink (`.path`,
    `.lines` written so far).
    """
    if verbose is None:
        verbose = _STACK[-1].verbose if _STACK else False
    file = None
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (closed in _pop)
    sink = _Sink(file=file, path=Path(path) if path is not None else None, verbose=verbose,
                 console=console)
    real_stderr = _SAVED["stderr"] if _STACK else sys.stderr
    if console is not None and getattr(console, "_file", None) is None:
        # a Console(stderr=True) looks up sys.stderr when it writes: keep it on the real one
        sink.pinned.append((console, None))
        console.file = real_stderr
    if console is None:
        sink.show = real_stderr
    _push(sink)
    try:
        yield sink
    finally:
        _pop(sink)


def emit(text: str) -> None:
    """Log `text` (one entry per non-empty line) under the active stage and unit."""
    sink = _STACK[-1] if _STACK else None
    if sink is None:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        return
    label = sink.label()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with _LOCK:
        for line in _ANSI.sub("", text).splitlines():
            if not line.strip():
                continue
            if sink.file is not None:
                sink.file.write(f"{stamp} [{label}] {line}\n")
                sink.lines += 1
            if sink.verbose:
                _display(sink, f"[{label}] {line}", logged=sink.file is not None)


def _display(sink: _Sink, text: str, *, logged: bool) -> None:
    if sink.console is not None:
        sink.console.print(text, markup=False, highlight=False, soft_wrap=True)
    elif sink.show is not None:
        # a unit process tells its parent the line is in the log already: show it, no more
        sink.show.write((_SHOWN if logged and sink.fixed_label is not None else "") + text
                        + "\n")
        sink.show.flush()


def from_child(line: str) -> None:
    """One line a helper process wrote to its stderr pipe (see `peftlab.bench.runner`)."""
    line = line.rstrip("\n")
    if line.startswith(_SHOWN):
        sink = _STACK[-1] if _STACK else None
        if sink is not None and sink.verbose:
            _display(sink, line[1:], logged=True)
        return
    if line.strip():
        emit(line)


def pump(stream: IO[bytes]) -> threading.Thread:
    """Read a child's stderr pipe line by line into `from_child`, on a daemon thread."""
    def run() -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
            for raw in iter(stream.readline, b""):
                from_child(raw.decode("utf-8", "replace"))

    thread = threading.Thread(target=run, name="peftlab-child-stderr", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _labelled(**labels: str) -> Iterator[None]:
    """Set the current sink's `stage` and/or `unit` labels inside the block, restoring them (and
    flushing what was logged under them) after."""
    sink = _STACK[-1] if _STACK else None
    if sink is None:
        yield
        return
    saved = {k: getattr(sink, k) for k in labels}
    for k, v in labels.items():
        setattr(sink, k, v)
    try:
        yield
    finally:
        _ROUTER.drain()
        for k, v in saved.items():
            setattr(sink, k, v)


def stage(name: str) -> contextlib.AbstractContextManager[None]:
    """Label what is logged inside the block with the stage `name` (and no unit yet)."""
    return _labelled(stage=name, unit="")


def unit(name: str) -> contextlib.AbstractContextManager[None]:
    """Label what is logged inside the block with the unit of work `name` (a run id, ...)."""
    return _labelled(unit=name)


def track(console: Any, description: str, items: Iterable[T], *,
          label: Callable[[T], str] = str) -> Iterator[T]:
    """Yield `items` under a progress bar (done/total, elapsed, ETA), each inside `unit`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    items = list(items)
    if not items:
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    # redirect_*=False: the bar must not pull sys.stderr (the capture's) back onto the console
    with Progress(*columns, console=console, transient=False, redirect_stdout=False,
                  redirect_stderr=False) as progress:
        bar = progress.add_task(description, total=len(items))
        for item in items:
            name = label(item)
            progress.update(bar, description=f"{description} {name}")
            with unit(name):
                yield item
            progress.advance(bar)
        progress.update(bar, description=description)


@contextlib.contextmanager
def script_log(name: str) -> Iterator[_Sink]:
    """For a script outside a study (benchmarks/): library messages go to a log file in the
    temporary folder (`peftlab-<name>.log`, appended), and the end says how many went there."""
    import tempfile

    path = Path(tempfile.gettempdir()) / f"peftlab-{name}.log"
    start = path.stat().st_size if path.is_file() else 0
    with capture(path) as sink:
        yield sink
    added = lines_since(path, start)
    if added:
        print(f"library messages: {added} lines in {path}", file=sys.stderr)


def lines_since(path: Path, offset: int) -> int:
    """Lines appended to the log file `path` after byte `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))


def verbose() -> bool:
    """Whether the active capture shows library lines live."""
    return bool(_STACK and _STACK[-1].verbose)


def child_settings() -> dict[str, Any] | None:
    """What a unit process needs to log like this one: file, label, verbose (None: no capture)."""
    if not _STACK:
        return None
    sink = _STACK[-1]
    return {"path": str(sink.path) if sink.path else None, "label": sink.label(),
            "verbose": sink.verbose}


def capture_child(settings: dict[str, Any]) -> None:
    """In a unit process (for its whole life): everything it writes goes to the parent's log.

    Python-level output (stderr and stdout) is logged line by line under the parent's label; the
    process's fds 1 and 2 are pointed at the log file too, so what C code or a crashing
    interpreter writes lands there (without a label). Verbose: lines are also sent to the old
    stderr (the parent's pipe), to be shown.
    """
    path = settings.get("path")
    show = None
    if settings.get("verbose"):
        show = os.fdopen(os.dup(2), "w", encoding="utf-8", buffering=1)
    target = open(path if path else os.devnull, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(target.fileno(), 2)
    os.dup2(target.fileno(), 1)  # a unit's stdout carries no result (that is a JSON file)
    sys.stdout = _ROUTER  # so prints are labelled too
    sink = _Sink(file=target if path else None, path=Path(path) if path else None,
                 verbose=bool(settings.get("verbose")), show=show,
                 fixed_label=str(settings.get("label") or "bench"), owned=False)
    _push(sink)
