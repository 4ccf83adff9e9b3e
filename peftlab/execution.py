"""Executors: where a study's units of work run, in the driver's process or as Ray tasks.

    peftlab run SPEC --executor ray                    # a Ray runtime started on this machine
    peftlab run SPEC --executor ray --address auto     # the cluster of `ray start --head`

    ex = make_executor(study.spec.execution)           # LocalExecutor or RayExecutor
    ex.check_shared_filesystem(study.output_dir)       # every node sees the study directory
    for out in run_units(console, "finetune", ex, units):   # Outcome per Unit, as they finish
        out.value, out.failure, out.attempts

A unit (`Unit`) is a plain module-level function with picklable arguments (a RunConfig, data
frames, paths) that returns its record(s) and never opens the store: training runs
(`stages.finetune.train_unit`), search trials (`hpsearch.trial_unit`) and representation extraction
(`stages.represent.extract_unit`). The driver (the `peftlab run` process) plans, holds the study
lock and is the only writer of the store: it writes a unit's `running` record when it dispatches
it and the unit's returned record when it comes back. Artifacts (adapters, representation files)
are written by the unit itself, atomically, into the study directory, which must therefore be on
a filesystem every node sees; `RayExecutor.check_shared_filesystem` verifies that at start.

Failures:
- A user mistake (PeftlabError) inside a unit comes back to the driver as the same error class
  (`Outcome.error`); the stage cleans up and raises it, which stops the study.
- A worker that dies (SIGKILL, OOM killer, lost node) is not a property of the unit: the driver
  runs the unit again, up to `execution.max_retries` times, and then reports it failed with every
  attempt's reason (`Outcome.failure`, `Outcome.attempts`); the other units go on. The retries are
  the driver's, not Ray's (`max_retries=0` on the task), so the record can say what happened.
- Ctrl-C (or any exception) on the driver: `close()` cancels every task in flight
  (`ray.cancel(force=True)` kills its worker). A killed unit leaves at most a `*.tmp-<pid>`
  folder or file, which the next start sweeps away, and a `running` record of the driver's pid,
  which reads as `interrupted` once the driver has exited, so the unit runs again.

Joining a cluster is bounded: `check_ray_address` resolves the address as ray.init would and
opens a TCP connection to its GCS (or Ray Client) port, so a typo in an address or a cluster that
is down ends in one error within `execution.connect_timeout_s` (default 30 s) instead of Ray's
minutes of retries; ray.init itself then makes one bounded attempt.

Benchmarks are not units: the bench stage runs on the driver's node, after every fan-out stage
has finished (it comes after finetune and represent in `study.STAGES`), with nothing of the
study's scheduled beside it. Two reasons. A latency measured while other work shares the
machine's cores, memory bandwidth or GPU is not the quantity the benchmark reports, and Ray
offers no way to keep other tasks off a node short of reserving the whole node. And the report
compares deployment modes as ratios measured side by side, which holds only when every mode of a
comparison ran on the same hardware; one node guarantees that, a cluster of mixed nodes does not.
Weight analysis and the drift measures stay on the driver too: they read small files and are
seconds of CPU next to minutes of training.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError, SpecError, StoreError

if TYPE_CHECKING:
    from peftlab.spec import ExecutionSpec

PROBE_DIR = ".peftlab-probes"  # inside the study directory, removed after the check


@dataclass
class Unit:
    """One unit of work: `fn(*args, **kwargs)` in some process; `tag` stays on the driver (the
    RunConfig or trial it belongs to); `on_start` runs on the driver when the unit is dispatched
    (it writes the unit's `running` record)."""

    key: str  # what the unit is: a run id, "search/<study>/<trial>", "represent/<task>/<key>"
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    tag: Any = None
    on_start: Callable[[], None] | None = None


@dataclass
class Outcome:
    """How a unit ended. Exactly one of: `value` (what `fn` returned), `error` (a user mistake
    raised in the unit), `failure` (why it never returned: its worker died on every attempt)."""

    unit: Unit
    value: Any = None
    error: PeftlabError | None = None
    failure: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # attempts whose worker died
    host: str | None = None  # the host the returning attempt ran on
    seconds: float = 0.0  # dispatch to return of the last attempt, on the driver's clock

    def execution(self, backend: str) -> dict[str, Any]:
        """What a record says about where and how its unit ran (under provenance.execution)."""
        return {"backend": backend, "host": self.host, "attempt": len(self.attempts) + 1,
                "earlier_attempts": self.attempts, "unit_s": round(self.seconds, 3)}


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
          ) -> tuple[str, Any, str]:
    """Run a unit where it was sent. A user mistake comes back as data, not as a remote
    traceback, so the driver raises the same one-line error a local run would."""
    host = socket.gethostname()
    try:
        return "ok", fn(*args, **kwargs), host
    except PeftlabError as e:
        return "user_error", (type(e), str(e)), host


class Executor:
    """Runs units: `submit` them, then `next_done` returns each Outcome as it finishes."""

    backend = "local"
    in_process = True  # units run in the driver's process (closures and store callbacks work)

    def submit(self, unit: Unit) -> None:
        raise NotImplementedError

    def next_done(self) -> Outcome:
        raise NotImplementedError

    @property
    def pending(self) -> int:
        raise NotImplementedError

    def check_shared_filesystem(self, root: Path) -> list[str]:
        """The hosts that see `root` (a local executor's one host sees it trivially)."""
        return [socket.gethostname()]

    def cancel(self) -> None:
        """Stop every unit in flight (their results are dropped)."""

    def close(self) -> None:
        self.cancel()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """Every unit in the driver's process, one after another, in submission order.

    Lazy: a unit runs inside `next_done`, so a stage's loop sees the same sequence of
    start -> record as it did before executors existed (progress callbacks that write the store
    included).
    """

    def __init__(self) -> None:
        self._queue: list[Unit] = []

    def submit(self, unit: Unit) -> None:
        self._queue.append(unit)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def next_done(self) -> Outcome:
        unit = self._queue.pop(0)
        if unit.on_start is not None:
            unit.on_start()
        t0 = time.perf_counter()
        try:
            value = unit.fn(*unit.args, **unit.kwargs)
        except PeftlabError as e:
            return Outcome(unit, error=e, host=socket.gethostname(),
                           seconds=time.perf_counter() - t0)
        return Outcome(unit, value=value, host=socket.gethostname(),
                       seconds=time.perf_counter() - t0)

    def cancel(self) -> None:
        self._queue.clear()


def _death_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose process or node went away (not an error of the task)."""
    from ray import exceptions as rx

    return (rx.WorkerCrashedError, rx.NodeDiedError, rx.OutOfMemoryError,
            rx.LocalRayletDiedError, rx.ObjectLostError, rx.OwnerDiedError)


class RayExecutor(Executor):
    """Units as Ray tasks with the spec's resources; the driver retries units whose worker died.

    address: None starts a Ray runtime on this machine (unless one is already initialised in
    this process, e.g. a test's `ray.init(num_cpus=2)`, which is used and left running); "auto"
    joins the cluster this machine is part of; anything else is passed to `ray.init(address=)`.
    A cluster that cannot be reached is refused (SpecError naming `where`, the address and what
    was tried) within about `connect_timeout_s` (`check_ray_address`, `_bounded_gcs_connect`).
    """

    backend = "ray"
    in_process = False

    def __init__(self, *, address: str | None = None, cpu: float = 1.0, gpu: float = 0.0,
                 max_retries: int = 1, connect_timeout_s: float = 30.0,
                 where: str = "execution.address"):
        ray = _import_ray(connect_timeout_s)
        self._ray = ray
        self._owns_runtime = False
        if not ray.is_initialized():
            # a cluster that cannot be reached fails here, within connect_timeout_s, instead of
            # inside ray.init (which retries an unreachable GCS for minutes)
            target = check_ray_address(address, connect_timeout_s, where=where)
            env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_HOME", "OMP_NUM_THREADS")
                   if k in os.environ}
            try:
                with _bounded_gcs_connect(connect_timeout_s if target else None):
                    # log_to_driver=False: worker output (library warnings, Trainer chatter)
                    # stays in Ray's session logs instead of scrolling over the driver's
                    # progress display.
                    ray.init(address=address, log_to_driver=False, include_dashboard=False,
                             runtime_env={"env_vars": env} if env else None)
            except (ConnectionError, ValueError, RuntimeError) as e:
                tried = (f" (tried the {target.describe()}, execution.connect_timeout_s "
                         f"{connect_timeout_s:g})" if target else "")
                raise SpecError(f"{where} {address!r}: cannot start or join a Ray cluster"
                                f"{tried}: {_first_line(e)}; start one with `ray start "
                                "--head`, or leave address empty to run Ray on this machine"
                                ) from None
            self._owns_runtime = True
        self.max_retries = max_retries
        self._task = ray.remote(_call)
        # max_retries=0: a dead worker comes back to the driver, which decides (see next_done)
        self._options = dict(num_cpus=cpu, num_gpus=gpu, max_retries=0)
        # object ref -> (unit, dead attempts so far, dispatch time)
        self._in_flight: dict[Any, tuple[Unit, list[dict[str, Any]], float]] = {}

    @property
    def pending(self) -> int:
        return len(self._in_flight)

    def _dispatch(self, unit: Unit, attempts: list[dict[str, Any]]) -> None:
        # the task's name is the worker's process title while it runs: `ray::peftlab:<key>`
        ref = self._task.options(**self._options, name=f"peftlab:{unit.key}").remote(
            unit.fn, unit.args, unit.kwargs)
        self._in_flight[ref] = (unit, attempts, time.perf_counter())

    def submit(self, unit: Unit) -> None:
        if unit.on_start is not None:
            unit.on_start()  # Ray decides when it starts; the driver knows when it is sent
        self._dispatch(unit, [])

    def next_done(self) -> Outcome:
        ray = self._ray
        deaths = _death_errors()
        while True:
            if not self._in_flight:
                raise RuntimeError("next_done() with no unit in flight")
            ready, _ = ray.wait(list(self._in_flight), num_returns=1)
            ref = ready[0]
            unit, attempts, t0 = self._in_flight.pop(ref)
            try:
                status, value, host = ray.get(ref)
            except deaths as e:
                reason = _first_line(e)
                attempts = [*attempts, {"attempt": len(attempts) + 1, "reason": reason}]
                if len(attempts) <= self.max_retries:
                    self._dispatch(unit, attempts)
                    continue
                return Outcome(unit, failure=(
                    f"its worker died on all {len(attempts)} attempts "
                    f"(execution.max_retries {self.max_retries}); last: {reason}"),
                    attempts=attempts, seconds=time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            if status == "user_error":
                cls, message = value
                return Outcome(unit, error=cls(message), attempts=attempts, host=host,
                               seconds=seconds)
            return Outcome(unit, value=value, attempts=attempts, host=host, seconds=seconds)

    def cancel(self) -> None:
        for ref in list(self._in_flight):
            # force=True kills the worker process: a half-trained unit must not go on writing
            # into the study directory after the driver has let go of it.
            self._ray.cancel(ref, force=True)
        self._in_flight.clear()

    def close(self) -> None:
        self.cancel()
        if self._owns_runtime:
            self._ray.shutdown()
            self._owns_runtime = False

    def check_shared_filesystem(self, root: Path, *, worker_root: Path | None = None
                                ) -> list[str]:
        """Refuse (StoreError) unless every alive node reads and writes `root` as the driver does.

        The driver writes a token file under `root`; one zero-CPU task pinned to each node reads
        it and writes a file of its own, which the driver then reads. Returns the nodes' hosts.
        `worker_root` (tests only) sends the tasks to another folder, as a node whose path leads
        elsewhere would see it.
        """
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        probes = Path(root) / PROBE_DIR
        probes.mkdir(parents=True, exist_ok=True)
        (probes / f"{token}.driver").write_text(token)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(_probe)
        refs = [probe.options(num_cpus=0, max_retries=0, name="peftlab:probe",
                              scheduling_strategy=NodeAffinitySchedulingStrategy(
                                  n["NodeID"], soft=False)).remote(str(worker_root or root),
                                                                   token, n["NodeID"])
                for n in nodes]
        problems, hosts = [], []
        try:
            answers = ray.get(refs, timeout=300)
        except ray.exceptions.GetTimeoutError:
            answers = [None] * len(nodes)
        try:
            for node, answer in zip(nodes, answers, strict=True):
                where = node.get("NodeManagerAddress", node["NodeID"][:8])
                mine = probes / f"{token}.{node['NodeID']}"
                if answer is None:
                    problems.append(f"{where}: the probe task did not answer within 300 s")
                elif answer["error"]:
                    problems.append(f"{answer['host']} ({where}): {answer['error']}")
                elif not mine.is_file() or mine.read_text() != node["NodeID"]:
                    problems.append(f"{answer['host']} ({where}): the file it wrote is not "
                                    "visible from the driver")
                else:
                    hosts.append(answer["host"])
        finally:
            for p in probes.glob(f"{token}.*"):
                p.unlink(missing_ok=True)
            if not any(probes.iterdir()):
                probes.rmdir()
        if problems:
            raise StoreError(
                f"{root}: the study directory is not on a filesystem that every Ray node "
                f"sees as the driver does: {'; '.join(problems)}. Put output_dir on a shared "
                "filesystem (NFS, Lustre, a cloud file share) mounted at the same path on every "
                "node, or run with execution.backend: local")
        return hosts


def _probe(root: str, token: str, node_id: str) -> dict[str, Any]:
    """On one node: read the driver's token file, then write this node's own file."""
    host = socket.gethostname()
    probes = Path(root) / PROBE_DIR
    try:
        seen = (probes / f"{token}.driver").read_text()
    except OSError as e:
        return {"host": host, "error": f"cannot read the driver's probe file under {root} "
                                       f"({e.strerror or e})"}
    if seen != token:
        return {"host": host, "error": f"{root} holds another probe file than the driver's"}
    try:
        tmp = probes / f"{token}.{node_id}.tmp-{os.getpid()}"
        tmp.write_text(node_id)
        os.replace(tmp, probes / f"{token}.{node_id}")
    except OSError as e:
        return {"host": host, "error": f"cannot write under {root} ({e.strerror or e})"}
    return {"host": host, "error": None}


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0]}"


def make_executor(spec: ExecutionSpec, *, backend: str | None = None,
                  address: str | None = None) -> Executor:
    """The executor `spec` asks for; `backend` / `address` (the CLI's --executor / --address)
    win over the spec's."""
    name = backend or spec.backend
    if name == "local":
        if address is not None:
            raise SpecError(f"--address {address!r} is a Ray cluster's: add --executor ray "
                            "(or set execution.backend: ray in the spec)")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address if address is not None else spec.address,
                           cpu=spec.resources.cpu, gpu=spec.resources.gpu,
                           max_retries=spec.max_retries,
                           connect_timeout_s=spec.connect_timeout_s,
                           where="--address" if address is not None else "execution.address")
    raise SpecError(f"--executor: expected local or ray, got {name!r}")


def check_executor(spec: ExecutionSpec, *, backend: str | None = None,
                   address: str | None = None) -> None:
    """What `make_executor` would refuse before it starts anything: an unknown backend, an
    address without Ray, Ray not installed, a Ray cluster that cannot be reached within
    `spec.connect_timeout_s` (SpecError). Nothing is started, so a command can check this before
    it opens the study directory."""
    name = backend or spec.backend
    if name not in ("local", "ray"):
        raise SpecError(f"--executor: expected local or ray, got {name!r}")
    if name == "local":
        if address is not None:
            raise SpecError(f"--address {address!r} is a Ray cluster's: add --executor ray "
                            "(or set execution.backend: ray in the spec)")
        return
    ray = _import_ray(spec.connect_timeout_s)
    if not ray.is_initialized():
        check_ray_address(address if address is not None else spec.address,
                          spec.connect_timeout_s,
                          where="--address" if address is not None else "execution.address")


# -- reaching a Ray cluster -------------------------------------------------------------------


# Ray's settings (read from the environment) that bound ray.init's connection to a GCS
_RAY_GCS_ATTEMPT_S = "RAY_py_gcs_connect_timeout_s"  # one attempt, s; read when ray is imported
_RAY_GCS_ATTEMPTS = "RAY_gcs_server_port_wait_time_s"  # attempts, ~1 s apart; read per ray.init


def _import_ray(connect_timeout_s: float | None = None) -> Any:
    """`import ray`; the first import in this process also bounds one attempt of a GCS
    connection to `connect_timeout_s` (Ray's RAY_py_gcs_connect_timeout_s, default 30 s, which
    Ray reads once, when it is imported; a value the user set wins)."""
    if connect_timeout_s is not None and "ray" not in sys.modules:
        os.environ.setdefault(_RAY_GCS_ATTEMPT_S, str(max(1, math.ceil(connect_timeout_s))))
    try:
        import ray
    except ImportError:
        raise SpecError("execution.backend 'ray' needs Ray, which is not installed: "
                        "pip install -e \".[ray]\" (on every node)") from None
    return ray


@dataclass(frozen=True)
class RayTarget:
    """The endpoint `ray.init(address=...)` will connect to: the GCS of a cluster (host:port,
    what `ray start --head` prints) or a Ray Client server (ray://host:port)."""

    host: str
    port: int
    via: str  # how the address was found: "given", "RAY_ADDRESS", "ray start"
    client: bool = False

    def describe(self) -> str:
        what = "Ray Client server" if self.client else "GCS"
        via = {"RAY_ADDRESS": ", from RAY_ADDRESS",
               "ray start": ", the cluster `ray start` recorded on this machine"}.get(self.via, "")
        return f"{what} at {self.host}:{self.port}{via}"


RAY_CLIENT_PORT = 10001  # Ray Client's default port, when ray://host names none


def ray_target(address: str | None, *, where: str = "execution.address") -> RayTarget | None:
    """Where Ray will connect for `address` (None: ray.init starts a runtime of its own).

    Ray's own reading of the address decides (`ray._private.services.
    canonicalize_bootstrap_address`: RAY_ADDRESS over the argument; "auto" and no address fall
    back to the cluster recorded by `ray start` on this machine; localhost becomes this node's
    IP), so the check below tries what ray.init would try. SpecError for "auto" with no cluster
    to join, or an address that is not host:port.
    """
    given = address
    # as ray.init reads it: RAY_ADDRESS stands in for no address or "auto" only
    env = (os.environ.get("RAY_ADDRESS") or None) if address in (None, "auto") else None
    address = env or address
    if address is not None and "://" in address:
        if not address.startswith("ray://"):
            return None  # another scheme's client (e.g. a hosted service): Ray's own handling
        host, _, port = address[len("ray://"):].partition("/")[0].rpartition(":")
        if not host:
            host, port = port, str(RAY_CLIENT_PORT)
        return RayTarget(_host(host), _port(port, given, where), "RAY_ADDRESS" if env else "given",
                         client=True)
    if address == "local":
        return None
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this helper: read host:port ourselves, no fallbacks
        canonicalize_bootstrap_address = None
    if canonicalize_bootstrap_address is None:
        if address in (None, "auto"):
            return None
        bootstrap = address
    else:
        try:
            bootstrap = canonicalize_bootstrap_address(address)
        except ConnectionError:  # "auto": no cluster recorded or running on this machine
            raise SpecError(f"{where} {given!r}: no running Ray cluster found on this machine "
                            "(none recorded by `ray start`, no GCS process, RAY_ADDRESS unset); "
                            "start one with `ray start --head`, give a cluster's address as "
                            "host:port, or leave address empty to run Ray on this machine"
                            ) from None
        except ValueError:
            bootstrap = None if address in (None, "auto") else address
        if bootstrap is None:
            return None
    host, _, port = bootstrap.rpartition(":")
    if not host:
        raise SpecError(f"{where} {given!r}: expected auto, host:port (the GCS address `ray "
                        "start --head` prints) or ray://host:port")
    via = "RAY_ADDRESS" if env else ("ray start" if address in (None, "auto") else "given")
    return RayTarget(_host(host), _port(port, given, where), via)


def _host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]


def _port(port: str, given: str | None, where: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"{where} {given!r}: the port {port!r} is not a number from 1 to "
                        "65535; expected auto, host:port or ray://host:port")
    return int(port)


def check_ray_address(address: str | None, timeout_s: float, *,
                      where: str = "execution.address") -> RayTarget | None:
    """Refuse (SpecError, within about `timeout_s` seconds) a Ray address that cannot be
    reached: the host name does not resolve, or nothing accepts a TCP connection on the port.
    Returns the target (None: Ray will start a runtime of its own, nothing to reach).

    ray.init itself retries an unreachable GCS for many minutes, printing warnings; this check
    is what a user with a typo in a cluster address meets instead.
    """
    target = ray_target(address, where=where)
    if target is None:
        return None
    deadline = time.monotonic() + timeout_s
    within = f"within execution.connect_timeout_s {timeout_s:g} s"
    head = f"{where} {address!r}: cannot reach a Ray cluster"
    hint = ("start the cluster (`ray start --head` prints its address), fix the address, or "
            "leave it empty to run Ray on this machine")
    # getaddrinfo has no timeout of its own; a thread bounds it (left behind if it hangs)
    pool = ThreadPoolExecutor(1, thread_name_prefix="peftlab-resolve")
    job = pool.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        infos = job.result(timeout=max(deadline - time.monotonic(), 0.0))
    except FuturesTimeout:
        raise SpecError(f"{head}: looking up the host {target.host!r} did not end {within}; "
                        f"{hint}") from None
    except OSError as e:
        raise SpecError(f"{head}: the host {target.host!r} does not resolve "
                        f"({e.strerror or e}); {hint}") from None
    failures = []
    for family, kind, proto, _, sockaddr in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            failures.append(f"{sockaddr[0]}: no answer {within}")
            break
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            try:
                sock.connect(sockaddr)
                return target
            except TimeoutError:
                failures.append(f"{sockaddr[0]}: no answer {within}")
            except OSError as e:
                failures.append(f"{sockaddr[0]}: {e.strerror or e}")
    raise SpecError(f"{head}: a TCP connection to the {target.describe()} failed "
                    f"({'; '.join(dict.fromkeys(failures))}); {hint}")


@contextlib.contextmanager
def _bounded_gcs_connect(timeout_s: float | None) -> Iterator[None]:
    """ray.init joining a cluster makes one attempt to reach its GCS (None: Ray's default, 20).

    A GCS port that accepts TCP connections but does not answer (another service on the port,
    a GCS still starting) passes `check_ray_address`; ray.init would then try 20 times, each
    attempt bounded by RAY_py_gcs_connect_timeout_s (`_import_ray`). Ray reads the number of
    attempts, RAY_gcs_server_port_wait_time_s, when it connects, so it is set for the call only;
    a value the user set wins. Ray's fixed 5 s waits for the GCS and its pubsub channel come on
    top: such a failure takes about connect_timeout_s + 10 s.
    """
    if timeout_s is None or _RAY_GCS_ATTEMPTS in os.environ:
        yield
        return
    os.environ[_RAY_GCS_ATTEMPTS] = "1"
    try:
        yield
    finally:
        os.environ.pop(_RAY_GCS_ATTEMPTS, None)


def run_units(console: Any, description: str, executor: Executor, units: list[Unit]
              ) -> Iterator[Outcome]:
    """Submit every unit, then yield their outcomes as they finish, under a progress bar.

    With the local executor each unit runs (inside the bar's step, labelled with its key, so
    library log lines name it) when its outcome is asked for; with Ray all are in flight at
    once, as many running as the cluster's resources allow.
    """
    from peftlab.logs import track

    for u in units:
        executor.submit(u)
    order = [u.key for u in units]
    label = (lambda i: order[i]) if executor.in_process else (lambda i: f"({i + 1}/{len(order)})")
    try:
        for _ in track(console, description, list(range(len(units))), label=label):
            yield executor.next_done()
    finally:
        if executor.pending:  # the caller stopped early (an error): nothing is left running
            executor.cancel()
