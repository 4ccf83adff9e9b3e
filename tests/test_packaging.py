"""A built wheel carries the shipped specs: a fresh, non-editable install finds them by name.

    pip wheel . --no-deps  ->  a fresh virtual environment  ->  peftlab validate quickstart

The project environment has peftlab installed in editable mode, so the check needs an
environment of its own: `python -m venv` (no pip, no packages), the wheel installed into it with
`pip --python VENV install --no-deps`, and the dependencies (torch & co.) made visible through a
.pth file that lists the project environment's site-packages folder. A folder listed that way is
not a site directory, so its own .pth files (the editable install's finder among them) are not
run: `import peftlab` can only find the wheel. Commands run through the venv's `peftlab` console
script, from a folder outside the checkout. Offline: `--no-build-isolation` builds with the
installed setuptools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@dataclass
class WheelInstall:
    venv: Path
    site: Path  # the venv's site-packages, where the wheel went
    work: Path  # a folder outside the checkout to run commands in
    env: dict[str, str]

    def peftlab(self, *args: str) -> subprocess.CompletedProcess:
        return _run([str(self.venv / "bin" / "peftlab"), *args], self.work, self.env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    """`pip wheel` on a copy of the checkout, installed (no deps) into a fresh venv."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    # Build from a copy, so the checkout gets no build/ folder while others work in it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "peftlab", src / "peftlab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)
    built = _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path / "dist"), "-q"], tmp_path, env)
    assert built.returncode == 0, built.stderr
    wheels = list((tmp_path / "dist").glob("peftlab-*.whl"))
    assert len(wheels) == 1

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path, env).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install",
                      "--no-deps", str(wheels[0]), "-q"], tmp_path, env)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "work"
    work.mkdir()
    return WheelInstall(venv=venv, site=site, work=work, env=env)


def test_wheel_install_runs_the_shipped_specs_by_name(wheel: WheelInstall) -> None:
    python = wheel.venv / "bin" / "python"
    where = _run([str(python), "-c", "import peftlab; print(peftlab.__file__)"], wheel.work,
                 wheel.env)
    assert Path(where.stdout.strip()).is_relative_to(wheel.site), where  # the wheel's
    assert sorted(p.name for p in (wheel.site / "peftlab" / "studies").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "peftlab" / "studies").glob("*.yaml"))

    ok = wheel.peftlab("validate", "quickstart")
    assert ok.returncode == 0, ok.stderr
    assert "ok: quickstart (18 training runs)" in ok.stdout
    init = wheel.peftlab("init", "my-study")
    assert init.returncode == 0, init.stderr
    assert "wrote my-study.yaml" in init.stdout and (wheel.work / "my-study.yaml").is_file()
    again = wheel.peftlab("validate", "my-study.yaml")
    assert again.returncode == 0, again.stderr
    assert "ok: my-study.yaml (18 training runs)" in again.stdout
    refused = wheel.peftlab("init", "my-study")
    assert refused.returncode == 2, refused
    assert refused.stderr.startswith("error: my-study.yaml") and "already exists" in refused.stderr


def test_wheel_install_runs_the_quickstart_without_a_spec(wheel: WheelInstall, glue_dir: Path
                                                          ) -> None:
    """`peftlab run` with no SPEC is the shipped quickstart, read from the installed package
    (its data stage only: seconds, where the whole study takes minutes)."""
    out = wheel.work / "qs"
    res = wheel.peftlab("run", "--stages", "data", "--data-dir", str(glue_dir),
                        "--output-dir", str(out))
    assert res.returncode == 0, res.stderr
    assert f"study directory: {out}" in res.stdout
    shipped = wheel.site / "peftlab" / "studies" / "quickstart.yaml"
    assert (out / "spec.yaml").read_text() == shipped.read_text()  # the copy it ran
    assert (out / "results.sqlite").is_file()
