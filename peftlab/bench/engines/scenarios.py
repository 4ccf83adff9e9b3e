"""Multi-tenant serving scenarios on a real engine, and the `engine_serving` table they fill.

    scenarios = plan_scenarios(base, adapters, merged, full=full, ks=[1, 3, 8], max_servers=3)
    records = run_scenarios(engine, scenarios, prompts, settings, log_dir=study / "engine")

S-LoRA's workload knobs, on one engine with the same settings for every configuration:

    base          the base model alone (the floor: no adapter at all)
    adapters-<n>  one server holding n LoRA adapters (n from `ks`: 1, 3, k >= 8), requests spread
                  over the n by the popularity pattern
    merged-<m>    m merged models, one server each, m = min(k, max_servers): as many servers as the
                  memory holds at once (`max_servers`, said in the table; `servers_that_fit`
                  measures it), compared like for like with adapters-<m>; the m servers share
                  the machine's cores, as k merged deployments on one machine would
    mixed         adapters and a fully fine-tuned model: one server with k-1 adapters and one with
                  the full model, requests over the k names

Per configuration and popularity pattern (uniform, power-law skewed; one pattern where there is
one model) a saturation sweep over rising rates (`bench.serving.saturation_sweep`: it stops at the
first rate not sustained), each rate one open-loop load run (`load.engine_load_run`); every
configuration sees the same arrival times and popularity draws (one seed). The configurations
run one after another (their servers cannot all be up at once on a small machine), so a change
of the machine's speed between them is not balanced out: each record carries the load average
before and after its run.

Resuming: a sweep's records are written together when it ends (`on_sweep`), each stamped with
what it measured (`scenario_stamp`: engine, settings, served models, prompts); a sweep whose
records carry the current stamp is not run again (`skip`). A server is started only for a
configuration with a sweep left to run.

The interface to the workload is narrow on purpose: `EnginePrompts` (prompts per name, output
lengths). A classification study's prompts are its tasks' evaluation texts; a generative study's
are its prompts, unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peftlab.bench.engines.base import Engine, EngineServer, ServedModels, group_members
from peftlab.bench.engines.load import EnginePrompts, Slo, engine_load_run
from peftlab.bench.serving import saturation_sweep
from peftlab.errors import PeftlabError
from peftlab.records import Record


class EngineServingRecord(Record):
    """One load run on a real engine: a configuration, a popularity pattern, a rate.

    key "<engine>/<config>/<pattern>/r<offered rate>". row: `load.engine_load_run`'s figures
    (TTFT, TPOT, ITL, end-to-end with p50/p90/p99, throughput, goodput, validity); sustained
    and the sweep's saturation figures as `bench.serving.saturation_sweep` defines them.
    memory_gib: each server's memory (proportional set size of its processes, GiB) after the
    sweep; sources: request name -> what it serves (a run id; a copy names its run); stamp:
    `scenario_stamp` (a rerun with the same stamp skips the sweep).
    """

    TABLE: ClassVar[str] = "engine_serving"
    KEY: ClassVar[str] = "{engine}/{config}/{pattern}/r{offered_rate:g}"
    engine: str
    engine_version: str | None
    config: str
    pattern: str
    offered_rate: float
    k: int
    models: list[str]
    servers: int
    note: str
    sustained: bool
    saturation_rate: float | None = None
    saturation_throughput: float | None = None
    first_unsustained_rate: float | None = None
    startup_s: list[float]
    row: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    memory_gib: list[float | None] = []
    sources: dict[str, str] = {}
    stamp: str | None = None


@dataclass
class Scenario:
    """One configuration: its servers and the request names routed to them (popularity order)."""

    config: str
    servers: list[ServedModels]
    route: dict[str, int]  # request name -> index into servers
    note: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # request name -> what it serves

    @property
    def names(self) -> list[str]:
        return list(self.route)


@dataclass
class ScenarioSettings:
    rates: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    patterns: list[str] = field(default_factory=lambda: ["uniform", "skewed"])
    zipf_exponent: float = 1.5
    max_requests: int = 100
    max_seconds: float = 30.0
    drain_seconds: float = 30.0
    min_requests: int = 100
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 250.0
    seed: int = 0


def plan_scenarios(base: str | Path, adapters: dict[str, str | Path],
                   merged: dict[str, str | Path], *, full: tuple[str, str | Path] | None = None,
                   ks: list[int], max_servers: int, max_lora_rank: int = 8,
                   configs: list[str] | None = None, sources: dict[str, str] | None = None,
                   fewer_servers_why: str = "") -> list[Scenario]:
    """The scenarios of the module docstring. adapters / merged: name -> folder, in popularity
    order (the same names, merged[n] = adapters[n] merged into the base; merged needs only the
    first max_servers); full: (name, folder) of a fully fine-tuned model for `mixed`. configs:
    the subset to plan (None: all). sources: name -> what it serves (a run id), carried into
    the records. With fewer merged servers m than k, adapters-m is planned too (the like-for-like
    pair of merged-m); fewer_servers_why says why m < k (default: max_servers)."""
    names = list(adapters)
    k = max(ks)
    if len(names) < k:
        raise PeftlabError(f"{k} adapters asked for, {len(names)} available")
    src = dict(sources or {})

    def of(use: list[str]) -> dict[str, str]:
        return {a: src[a] for a in use if a in src}

    out: list[Scenario] = [Scenario("base", [ServedModels(str(base), base_name="base")],
                                    {"base": 0}, "the base model alone")]
    m = min(k, max_servers, len(merged))
    for n in sorted({*ks, *([m] if 1 <= m < k else [])}):
        use = names[:n]
        out.append(Scenario(f"adapters-{n}", [ServedModels(
            str(base), base_name="base", adapters={a: str(adapters[a]) for a in use},
            max_lora_rank=max_lora_rank)], {a: 0 for a in use},
            f"one server, {n} LoRA adapter{'s' if n > 1 else ''} resident", of(use)))
    if m >= 1:
        use = names[:m]
        out.append(Scenario(f"merged-{m}", [ServedModels(str(merged[a]), base_name=a)
                                            for a in use], {a: i for i, a in enumerate(use)},
                            f"{m} merged model{'s' if m > 1 else ''}, one server each"
                            + (f" ({m} of {k}: {fewer_servers_why or f'max_servers {max_servers}'})"
                               if m < k else ""), of(use)))
    if full is not None and k >= 2:
        use = names[:k - 1]
        out.append(Scenario("mixed", [
            ServedModels(str(base), base_name="base", adapters={a: str(adapters[a]) for a in use},
                         max_lora_rank=max_lora_rank),
            ServedModels(str(full[1]), base_name=full[0])],
            {**{a: 0 for a in use}, full[0]: 1},
            f"{k - 1} adapters on one server and a fully fine-tuned model on another",
            {**of(use), full[0]: src.get(full[0], full[0])}))
    if configs is not None:
        out = [s for s in out if s.config in configs or s.config.split("-")[0] in configs]
    return out


def environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def start_all(servers: list[EngineServer]) -> None:
    """Start the servers side by side (a start is mostly CPU work in the engine's own
    processes: k merged models' servers come up in about the time of k / cores starts, not k):
    all launched from this thread (`EngineServer.launch`: the watchdogs must outlive their
    starter), then each waited for on its own thread; the first failure is raised once all have
    finished starting (the caller stops them all)."""
    errors: list[BaseException] = []
    for server in servers:
        server.launch()

    def wait(server: EngineServer) -> None:
        try:
            server.wait_ready()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=wait, args=(s,), daemon=True,
                                name=f"peftlab-start-{i}") for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def process_memory_gib(pids: list[int]) -> float | None:
    """The memory of a set of processes: the sum of their proportional set sizes (Linux
    /proc/<pid>/smaps_rollup: shared pages split among their users, so a server's processes
    that share libraries are not counted twice), GiB; None where /proc does not tell."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            return None
    return total / 2**20


def available_memory_gib() -> float | None:
    """MemAvailable of /proc/meminfo (GiB): what new processes can take without swapping."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) for line in fh
                        if line.startswith("MemAvailable:")) / 2**20
    except (OSError, StopIteration, ValueError):
        return None


def servers_that_fit(server_gib: float, available_gib: float) -> int:
    """How many servers of `server_gib` fit in `available_gib` (all servers stopped), leaving
    a fifth of it, at least 2 GiB, for peftlab, the load driver and the machine's other jobs
    (whose memory can grow meanwhile); at least 1."""
    reserve = max(2.0, 0.2 * available_gib)
    return max(1, int((available_gib - reserve) // server_gib)) if server_gib > 0 else 1


def scenario_stamp(engine: Engine, version: str | None, sc: Scenario, settings: ScenarioSettings,
                   prompts: EnginePrompts) -> str:
    """What a configuration's sweeps measured, hashed: the engine and its version, its settings,
    the load settings (patterns aside: one sweep each), the served models and what they are, the
    prompts and output lengths. Equal stamps: the stored sweep measures what a rerun would."""
    what = {"engine": engine.name, "version": version,
            "engine_settings": {k: v for k, v in asdict(engine.settings).items()
                                if k not in ("python", "startup_timeout_s", "stop_grace_s")},
            "engine_options": {k: v for k, v in vars(engine).items() if k != "settings"},
            "settings": {k: v for k, v in asdict(settings).items() if k != "patterns"},
            "config": sc.config, "route": sc.route, "sources": sc.sources,
            "servers": [asdict(x) for x in sc.servers],
            "prompts": [prompts.prompts.get(n) for n in sc.names],
            "lengths": [(prompts.lengths or {}).get(n) for n in sc.names],
            "max_tokens": prompts.max_tokens}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def patterns_of(sc: Scenario, settings: ScenarioSettings) -> list[str]:
    """The popularity patterns a configuration is swept under: one ("identical") for one name."""
    return list(settings.patterns) if len(sc.names) > 1 else ["identical"]


def run_scenario(engine: Engine, sc: Scenario, prompts: EnginePrompts,
                 settings: ScenarioSettings, *, log_dir: Path, version: str | None = None,
                 skip: Callable[[str], bool] | None = None,
                 on_sweep: Callable[[list[EngineServingRecord]], None] | None = None,
                 on_row: Callable[[str], None] | None = None) -> list[EngineServingRecord]:
    """One configuration: its servers started (all of them, then checked alive before every
    request), one saturation sweep per pattern not skipped (`skip(pattern)`), the servers
    stopped on every way out. on_sweep(records): called as each sweep ends (to store them);
    returns every record of the sweeps run."""
    todo = [p for p in patterns_of(sc, settings) if not (skip and skip(p))]
    if not todo:
        return []
    slo = Slo(settings.slo_ttft_ms, settings.slo_tpot_ms)
    stamp = scenario_stamp(engine, version, sc, settings, prompts)
    env = environment()
    records: list[EngineServingRecord] = []
    with contextlib.ExitStack() as stack:
        servers = [EngineServer(engine, served, log_path=Path(log_dir) / f"{sc.config}-{i}.log")
                   for i, served in enumerate(sc.servers)]
        for server in servers:
            stack.callback(server.stop)
        start_all(servers)
        urls = {name: servers[i].url for name, i in sc.route.items()}

        def alive() -> bool:
            return all(s.alive() for s in servers)

        for pattern in todo:
            def at_rate(rate: float, pattern: str = pattern) -> dict[str, Any]:
                before = os.getloadavg()
                row = engine_load_run(
                    urls, prompts, rate=rate, pattern=pattern,
                    max_requests=settings.max_requests, max_seconds=settings.max_seconds,
                    drain_seconds=settings.drain_seconds, seed=settings.seed,
                    zipf_exponent=settings.zipf_exponent, slo=slo,
                    min_requests=settings.min_requests, alive=alive)
                row["load_average"] = {"before": list(before), "after": list(os.getloadavg())}
                if on_row:
                    on_row(_progress(sc.config, pattern, rate, row))
                return row

            sweep = saturation_sweep(at_rate, settings.rates)
            memory = [process_memory_gib(group_members(s.pgid)) if s.pgid else None
                      for s in servers]
            done = [EngineServingRecord(
                engine=engine.name, engine_version=version, config=sc.config,
                pattern=pattern, offered_rate=row["offered_rate"], k=len(sc.names),
                models=sc.names, servers=len(sc.servers), note=sc.note,
                sustained=row["sustained"], saturation_rate=sweep["saturation_rate"],
                saturation_throughput=sweep["saturation_throughput"],
                first_unsustained_rate=sweep["first_unsustained_rate"],
                startup_s=[round(s.startup_s or 0.0, 1) for s in servers], row=row,
                settings={**asdict(settings), **asdict(engine.settings),
                          **{k: v for k, v in vars(engine).items() if k != "settings"},
                          "python": str(engine.settings.python)},
                environment=env, memory_gib=[None if m is None else round(m, 3)
                                             for m in memory],
                sources=sc.sources, stamp=stamp) for row in sweep["rows"]]
            if on_sweep:
                on_sweep(done)
            records += done
    return records


def run_scenarios(engine: Engine, scenarios: list[Scenario],
                  prompts_for: Callable[[list[str]], EnginePrompts], settings: ScenarioSettings,
                  *, log_dir: Path, on_row: Callable[[str], None] | None = None
                  ) -> list[EngineServingRecord]:
    """Run every scenario's saturation sweeps (see the module docstring); one record per load
    run. prompts_for(names): the prompts for those request names. on_row: progress lines."""
    version = engine.version()
    records: list[EngineServingRecord] = []
    for sc in scenarios:
        records += run_scenario(engine, sc, prompts_for(sc.names), settings, log_dir=log_dir,
                                version=version, on_row=on_row)
    return records


def _progress(config: str, pattern: str, rate: float, row: dict[str, Any]) -> str:
    ttft = (row.get("ttft_ms") or {}).get("p50")
    tpot = (row.get("tpot_ms") or {}).get("p50")
    return (f"{config} {pattern} {rate:g} req/s: {row['requests']['done']}/"
            f"{row['requests']['offered']} done, {row['throughput_rps']:.2f} req/s, TTFT p50 "
            f"{ttft if ttft is None else round(ttft)} ms, TPOT p50 "
            f"{tpot if tpot is None else round(tpot, 1)} ms"
            + ("" if row["keeps_up"] else " (not sustained)"))
