"""Multi-tenant serving scenarios on a real engine, and the `engine_serving` table they fill.

    scenarios = plan_scenarios(base, adapters, merged, full=full, ks=[1, 3, 8], max_servers=3)
    records = run_scenarios(engine, scenarios, prompts, settings, log_dir=study / "engine")

S-LoRA's workload knobs, on one engine with the same settings for every configuration:

    base          the base model alone (the floor: no adapter at all)
    adapters-<n>  one server holding n LoRA adapters (n from `ks`: 1, 3, k >= 8), requests spread
                  over the n by the popularity pattern
    merged-<m>    m merged models, one server each, m = min(k, max_servers): as many servers as the
                  memory and cores hold at once (`max_servers`, said in the table), compared like
                  for like with adapters-<m>
    mixed         adapters and a fully fine-tuned model: one server with k-1 adapters and one with
                  the full model, requests over the k names

Per configuration and popularity pattern (uniform, power-law skewed; one pattern where there is
one model) a saturation sweep over rising rates (`bench.serving.saturation_sweep`: it stops at the
first rate not sustained), each rate one open-loop load run (`load.engine_load_run`). The
configurations run one after another (their servers cannot all be up at once on a small machine),
so a change of the machine's speed between them is not balanced out: each record carries the
load average before and after its run.

The interface to the workload is narrow on purpose: `EnginePrompts` (prompts per name, max
tokens). A classification study's prompts are its tasks' evaluation texts; a generative study's
are its prompts, unchanged.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peftlab.bench.engines.base import Engine, EngineServer, ServedModels
from peftlab.bench.engines.load import EnginePrompts, Slo, engine_load_run
from peftlab.bench.serving import saturation_sweep
from peftlab.errors import PeftlabError
from peftlab.records import Record


class EngineServingRecord(Record):
    """One load run on a real engine: a configuration, a popularity pattern, a rate.

    key "<engine>/<config>/<pattern>/r<offered rate>". row: `load.engine_load_run`'s figures
    (TTFT, TPOT, ITL, end-to-end with p50/p90/p99, throughput, goodput, validity); sustained
    and the sweep's saturation figures as `bench.serving.saturation_sweep` defines them.
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


@dataclass
class Scenario:
    """One configuration: its servers and the request names routed to them (popularity order)."""

    config: str
    servers: list[ServedModels]
    route: dict[str, int]  # request name -> index into servers
    note: str = ""

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
                   configs: list[str] | None = None) -> list[Scenario]:
    """The scenarios of the module docstring. adapters / merged: name -> folder, in popularity
    order (the same names, merged[n] = adapters[n] merged into the base); full: (name, folder)
    of a fully fine-tuned model for `mixed`. configs: the subset to plan (None: all)."""
    names = list(adapters)
    k = max(ks)
    if len(names) < k:
        raise PeftlabError(f"{k} adapters asked for, {len(names)} available")
    out: list[Scenario] = [Scenario("base", [ServedModels(str(base), base_name="base")],
                                    {"base": 0}, "the base model alone")]
    for n in sorted(set(ks)):
        use = names[:n]
        out.append(Scenario(f"adapters-{n}", [ServedModels(
            str(base), base_name="base", adapters={a: str(adapters[a]) for a in use},
            max_lora_rank=max_lora_rank)], {a: 0 for a in use},
            f"one server, {n} LoRA adapter{'s' if n > 1 else ''} resident"))
    m = min(k, max_servers, len(merged))
    if m >= 1:
        use = names[:m]
        out.append(Scenario(f"merged-{m}", [ServedModels(str(merged[a]), base_name=a)
                                            for a in use], {a: i for i, a in enumerate(use)},
                            f"{m} merged models, one server each"
                            + (f" (max_servers {max_servers}: {k} would not fit)" if m < k
                               else "")))
    if full is not None and k >= 2:
        use = names[:k - 1]
        out.append(Scenario("mixed", [
            ServedModels(str(base), base_name="base", adapters={a: str(adapters[a]) for a in use},
                         max_lora_rank=max_lora_rank),
            ServedModels(str(full[1]), base_name=full[0])],
            {**{a: 0 for a in use}, full[0]: 1},
            f"{k - 1} adapters on one server and a fully fine-tuned model on another"))
    if configs is not None:
        out = [s for s in out if s.config in configs or s.config.split("-")[0] in configs]
    return out


def environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def run_scenarios(engine: Engine, scenarios: list[Scenario],
                  prompts_for: Callable[[list[str]], EnginePrompts], settings: ScenarioSettings,
                  *, log_dir: Path, on_row: Callable[[str], None] | None = None
                  ) -> list[EngineServingRecord]:
    """Run every scenario's saturation sweeps (see the module docstring); one record per load
    run. prompts_for(names): the prompts for those request names. on_row: progress lines."""
    version = engine.version()
    slo = Slo(settings.slo_ttft_ms, settings.slo_tpot_ms)
    records: list[EngineServingRecord] = []
    env = environment()
    for sc in scenarios:
        with contextlib.ExitStack() as stack:
            servers = []
            for i, served in enumerate(sc.servers):
                servers.append(stack.enter_context(EngineServer(
                    engine, served, log_path=Path(log_dir) / f"{sc.config}-{i}.log")))
            urls = {name: servers[i].url for name, i in sc.route.items()}

            def alive(servers: list[EngineServer] = servers) -> bool:
                return all(s.alive() for s in servers)

            patterns = settings.patterns if len(sc.names) > 1 else ["identical"]
            for pattern in patterns:
                def at_rate(rate: float, pattern: str = pattern, urls: dict = urls,
                            sc: Scenario = sc, alive: Callable = alive) -> dict[str, Any]:
                    before = os.getloadavg()
                    row = engine_load_run(
                        urls, prompts_for(sc.names), rate=rate, pattern=pattern,
                        max_requests=settings.max_requests, max_seconds=settings.max_seconds,
                        drain_seconds=settings.drain_seconds, seed=settings.seed,
                        zipf_exponent=settings.zipf_exponent, slo=slo,
                        min_requests=settings.min_requests, alive=alive)
                    row["load_average"] = {"before": list(before), "after":
                                           list(os.getloadavg())}
                    if on_row:
                        on_row(_progress(sc.config, pattern, rate, row))
                    return row

                sweep = saturation_sweep(at_rate, settings.rates)
                for row in sweep["rows"]:
                    records.append(EngineServingRecord(
                        engine=engine.name, engine_version=version, config=sc.config,
                        pattern=pattern, offered_rate=row["offered_rate"], k=len(sc.names),
                        models=sc.names, servers=len(sc.servers), note=sc.note,
                        sustained=row["sustained"], saturation_rate=sweep["saturation_rate"],
                        saturation_throughput=sweep["saturation_throughput"],
                        first_unsustained_rate=sweep["first_unsustained_rate"],
                        startup_s=[round(s.startup_s or 0.0, 1) for s in servers], row=row,
                        settings={**asdict(settings), **asdict(engine.settings),
                                  "python": str(engine.settings.python)},
                        environment=env))
    return records


def _progress(config: str, pattern: str, rate: float, row: dict[str, Any]) -> str:
    ttft = (row.get("ttft_ms") or {}).get("p50")
    tpot = (row.get("tpot_ms") or {}).get("p50")
    return (f"{config} {pattern} {rate:g} req/s: {row['requests']['done']}/"
            f"{row['requests']['offered']} done, {row['throughput_rps']:.2f} req/s, TTFT p50 "
            f"{ttft if ttft is None else round(ttft)} ms, TPOT p50 "
            f"{tpot if tpot is None else round(tpot, 1)} ms"
            + ("" if row["keeps_up"] else " (not sustained)"))
