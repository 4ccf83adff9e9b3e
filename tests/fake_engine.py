"""`FakeEngine`: the stand-in server `fake_engine_server.py` behind the `Engine` interface, for
tests of starting, driving and stopping engine servers without an engine environment."""

from __future__ import annotations

import sys
from pathlib import Path

import fake_engine_server

from peftlab.bench.engines.base import Engine, EngineSettings, ServedModels


class FakeEngine(Engine):
    """flags: passed to the stand-in (--fail, --never-healthy); child_pidfile: it starts a child
    process and writes its pid there."""

    name = "fake"

    def __init__(self, settings: EngineSettings, *flags: str, child_pidfile: Path | None = None):
        super().__init__(settings)
        self.flags = flags
        self.child_pidfile = child_pidfile

    def command(self, served: ServedModels, host: str, port: int) -> list[str]:
        cmd = [sys.executable, fake_engine_server.__file__, "--port", str(port), *self.flags]
        if self.child_pidfile:
            cmd += ["--child-pidfile", str(self.child_pidfile)]
        return cmd
