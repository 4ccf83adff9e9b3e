"""One interface for serving engines, and the server process peftlab starts, checks and stops.

    engine = ENGINES.get("vllm")(EngineSettings(python=engine_python()))
    served = ServedModels(base="/models/base", adapters={"sst2": "/adapters/sst2"})
    with EngineServer(engine, served, log_path=Path("runs/x/vllm.log")) as server:
        server.url            # http://127.0.0.1:<port>; OpenAI-compatible API (client.py)
        server.model_names()  # what a request's "model" field may name

An engine (one module per engine: `vllm.py`; llama.cpp's server or SGLang would be one more)
says how to start its server for a set of served models (a base with LoRA adapters, or one full
model folder), where its health endpoint is and which version it is. `EngineServer` does the
rest for every engine alike: it starts the server through `watchdog.py` (its own process group,
stopped when peftlab stops it, is interrupted or dies, SIGKILL included), waits for the health
endpoint with a time bound, and on failure raises an `EngineError` that names the spec key and
shows the end of the server's log. The engine runs from its own Python environment (vLLM pins
torch and transformers versions that differ from peftlab's): peftlab never imports it, it talks
to it over HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.bench.engines import watchdog
from peftlab.errors import PeftlabError

ENGINE_PYTHON_ENV = "PEFTLAB_ENGINE_PYTHON"
DEFAULT_ENGINE_VENV = ".venv-engine"
LOG_TAIL_LINES = 30


class EngineError(PeftlabError):
    """The serving engine is missing, or its server failed to start or to answer."""


def engine_python(configured: str | None = None, *, spec_key: str = "engine.python"
                  ) -> Path:
    """The Python of the engine's environment: `configured`, else $PEFTLAB_ENGINE_PYTHON, else
    `.venv-engine/bin/python` in the current directory or next to this checkout. Raises
    EngineError (naming `spec_key` and the build script) when none exists."""
    for cand, where in ((configured, spec_key), (os.environ.get(ENGINE_PYTHON_ENV),
                                                 f"${ENGINE_PYTHON_ENV}")):
        if cand:
            p = Path(cand).expanduser()
            if p.is_file():
                return p
            # an explicit choice that does not exist is an error, not a reason to look elsewhere
            other = f"${ENGINE_PYTHON_ENV}" if where == spec_key else spec_key
            raise EngineError(
                f"{where}: the serving engine's Python {p} does not exist; build the engine "
                f"environment with scripts/build-engine-env.sh {p.parent.parent}, or point "
                f"{where} (or {other}) at an existing one")
    tried = []
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        p = root / DEFAULT_ENGINE_VENV / "bin" / "python"
        if p.is_file():
            return p
        tried.append(str(p))
    raise EngineError(
        f"no serving engine environment found (tried {', '.join(tried)}); build it with "
        f"scripts/build-engine-env.sh, or point {spec_key} or ${ENGINE_PYTHON_ENV} at its "
        "python")


def find_engine_python() -> Path | None:
    """`engine_python()` or None when there is no engine environment (tests skip then)."""
    try:
        return engine_python()
    except EngineError:
        return None


@dataclass
class ServedModels:
    """What one server holds: a base (or full) model folder and LoRA adapters on it.

    base: a Hugging Face model folder; base_name: the name requests use for it (None: the
    folder's path, the engine's default); adapters: request name -> PEFT adapter folder.
    """

    base: str
    base_name: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int = 8

    def names(self) -> list[str]:
        return [self.base_name or self.base, *self.adapters]


@dataclass
class EngineSettings:
    """Settings every engine reads (from the spec's `engine:` block, `peftlab.engine_spec`).

    python: the engine environment's interpreter; dtype: weights; max_model_len: tokens per
    sequence (prompt + output); max_num_seqs: sequences batched at once; startup_timeout_s: how
    long the health endpoint may take to answer; stop_grace_s: SIGTERM to SIGKILL; extra_args:
    appended to the server's command; env: added to its environment.
    """

    python: str | None = None
    dtype: str = "float32"
    max_model_len: int = 512
    max_num_seqs: int = 16
    startup_timeout_s: float = 300.0
    stop_grace_s: float = 10.0
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    spec_key: str = "engine"


class Engine:
    """One serving engine. Subclasses set `name` and implement `command` (and may override
    `health_path`, `environment`, `version`)."""

    name = "engine"
    label = "an engine"  # how the report names it ("Serving on vLLM")
    health_path = "/health"
    unset_environment: tuple[str, ...] = ()  # variables of peftlab's environment not passed on

    def __init__(self, settings: EngineSettings):
        self.settings = settings

    def command(self, served: ServedModels, host: str, port: int) -> list[str]:
        """The server's command line for `served`, listening on host:port."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Variables added to the server's environment (on top of settings.env)."""
        return {}

    def version(self) -> str | None:
        """The engine's version (from its environment), None when unknown."""
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(text[-lines:]) or "(the server log is empty)"


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has exited; only unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is `pgid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


class EngineServer:
    """A running engine server (a context manager: started on enter, stopped on exit).

    log_path: the server's stdout and stderr. Attributes once started: url, port, pgid (the
    server's process group), watchdog (the Popen of the watchdog process).
    """

    def __init__(self, engine: Engine, served: ServedModels, *, log_path: Path,
                 host: str = "127.0.0.1", port: int | None = None):
        self.engine = engine
        self.served = served
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.pgid: int | None = None
        self.watchdog: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._t0 = 0.0

    def model_names(self) -> list[str]:
        return self.served.names()

    def __enter__(self) -> EngineServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and return once its health endpoint answers (`launch`, then
        `wait_ready`); raises EngineError, with the server stopped, when it does not."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the server's process (through the watchdog) without waiting for it. Call it
        from the thread that lives as long as the server: the watchdog's parent-death signal
        follows the thread that started it (Linux), so a server launched from a short-lived
        thread would be stopped when that thread ends."""
        s = self.engine.settings
        command = self.engine.command(self.served, self.host, self.port)
        exe = command[0]
        if not (Path(exe).is_file() or shutil.which(exe)):
            raise EngineError(f"the {self.engine.name} server command {exe} does not "
                              f"exist ({s.spec_key}); build the engine environment with "
                              "scripts/build-engine-env.sh")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        pidfile = self.log_path.with_suffix(".pid")
        pidfile.unlink(missing_ok=True)
        env = {**os.environ, **self.engine.environment(), **s.env}
        for name in ("PYTHONPATH", *self.engine.unset_environment):
            env.pop(name, None)  # peftlab's path must not leak into the engine's Python
        self._t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.watchdog = subprocess.Popen(
                [sys.executable, watchdog.__file__, str(os.getpid()), str(pidfile),
                 str(s.stop_grace_s), "--", *command],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def wait_ready(self) -> None:
        """Wait (at most settings.startup_timeout_s from the launch) for the health endpoint;
        on failure stop the server and raise EngineError. Safe in any thread."""
        try:
            self._wait_healthy(self.log_path.with_suffix(".pid"),
                               self._t0 + self.engine.settings.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - self._t0

    def _wait_healthy(self, pidfile: Path, deadline: float) -> None:
        s = self.engine.settings
        assert self.watchdog is not None
        while True:
            if self.pgid is None and pidfile.is_file():
                text = pidfile.read_text().strip()
                self.pgid = int(text) if text else None
            code = self.watchdog.poll()
            if code is not None:
                raise EngineError(
                    f"the {self.engine.name} server exited with code {code} before it "
                    f"answered on {self.engine.health_path} (settings: {s.spec_key}); the end of "
                    f"its log ({self.log_path}):\n{log_tail(self.log_path)}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise EngineError(
                    f"the {self.engine.name} server did not answer on "
                    f"{self.url}{self.engine.health_path} within {s.startup_timeout_s:g} s "
                    f"({s.spec_key}.startup_timeout_s); the end of its log "
                    f"({self.log_path}):\n{log_tail(self.log_path)}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.engine.health_path, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def alive(self) -> bool:
        return bool(self.pgid and group_members(self.pgid))

    def stop(self) -> None:
        """Stop the server and every process of its group; returns when none is left."""
        grace = self.engine.settings.stop_grace_s
        wd = self.watchdog
        if wd is not None and wd.poll() is None:
            wd.send_signal(signal.SIGTERM)
            try:
                wd.wait(timeout=grace + 5)
            except subprocess.TimeoutExpired:
                wd.kill()
                wd.wait()
        if self.pgid is None:
            pidfile = self.log_path.with_suffix(".pid")
            if pidfile.is_file() and pidfile.read_text().strip():
                self.pgid = int(pidfile.read_text().strip())
        if self.pgid is not None and group_members(self.pgid):
            watchdog.stop_group(self.pgid, grace)  # the watchdog was gone or killed first
