"""Serving engines peftlab can start and load (one module per engine behind `base.Engine`).

    engine = make_engine("vllm", EngineSettings(python=".venv-engine/bin/python"))

A new engine (SGLang, llama.cpp's server) is one module with an `Engine` subclass, added to
`ENGINE_CLASSES`.
"""

from __future__ import annotations

from peftlab.bench.engines.base import Engine, EngineError, EngineSettings
from peftlab.bench.engines.vllm import VllmEngine

ENGINE_CLASSES: dict[str, type[Engine]] = {VllmEngine.name: VllmEngine}


def make_engine(name: str, settings: EngineSettings, **options: object) -> Engine:
    if name not in ENGINE_CLASSES:
        raise EngineError(f"{settings.spec_key}.name: unknown engine {name!r} (known: "
                          f"{', '.join(ENGINE_CLASSES)})")
    return ENGINE_CLASSES[name](settings, **options)  # type: ignore[call-arg]
