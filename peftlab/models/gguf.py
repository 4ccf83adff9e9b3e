"""GGUF files: dequantised once into a normal safetensors folder under the peftlab cache, which is
reused afterwards (transformers refuses to save or train the GGUF-loaded model as is).

    folder = model_dir(resolved)     # the local folder a model loads from, converting a GGUF once
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peftlab.errors import ModelError
from peftlab.models.resolve import (
    ResolvedModel,
    cache_dir,
    check_local_folder,
    file_fingerprint,
    first_line,
)

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "model"


def gguf_cache_dir(resolved: ResolvedModel) -> Path:
    """Folder the converted GGUF model lives in: <cache>/models/<file stem>-<fingerprint[:12]>.

    The fingerprint covers the file's bytes (local) or hub id + file + revision (hub), so a changed
    file gets a new folder rather than a stale conversion.
    """
    if resolved.kind != "gguf" or resolved.gguf_file is None:
        raise ModelError(f"{resolved.describe()} is not a GGUF model")
    local = Path(resolved.source) / resolved.gguf_file
    if local.is_file():
        key = file_fingerprint([local], local.parent)
    else:
        key = hashlib.sha256(
            f"{resolved.source}\0{resolved.gguf_file}\0{resolved.revision}".encode()).hexdigest()
    return cache_dir() / "models" / f"{_slug(Path(resolved.gguf_file).stem)}-{key[:12]}"


def _clear_quantization(model: Any) -> None:
    """Unflag a GGUF-loaded model whose weights were already dequantised to plain float tensors.

    transformers keeps a GGUF "quantizer" on the model and a quantization_config on its config;
    with them `save_pretrained` raises "not serializable" and the Trainer refuses to train.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(
    path_or_dir: str | Path, gguf_file: str, out_dir: str | Path, *, revision: str | None = None
) -> Path:
    """Dequantise a GGUF model once into a safetensors folder (model + tokenizer); return it.

    path_or_dir: folder holding `gguf_file`, or a hub id (then `revision` applies).
    Idempotent: an existing complete `out_dir` is returned as is. Atomic: everything is written to
    a temporary sibling folder that is renamed to `out_dir` only when complete, so an interrupted
    run leaves no half folder behind. The dequantised model is float32 (~4 bytes/parameter, 517 MB
    for SmolLM2-135M; ~30 s on a CPU).
    """
    out_dir = Path(out_dir)
    if _is_complete(out_dir):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(gguf_file).is_absolute():
        path_or_dir, gguf_file = Path(gguf_file).parent, Path(gguf_file).name
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"loading GGUF file {gguf_file} needs the `gguf` package: "
                         "pip install gguf")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        log.info("converting GGUF %s/%s to %s (once)", path_or_dir, gguf_file, out_dir)
        hub = {"revision": revision} if revision and not Path(path_or_dir).is_dir() else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path_or_dir), gguf_file=gguf_file, **hub)
            model = AutoModelForCausalLM.from_pretrained(
                str(path_or_dir), gguf_file=gguf_file, dtype=torch.float32, **hub)
        except (OSError, ValueError, KeyError, NotImplementedError) as err:
            raise ModelError(f"cannot load GGUF file {gguf_file} from {path_or_dir}: "
                             f"{first_line(err)}") from err
        _clear_quantization(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "peftlab_conversion.json").write_text(json.dumps(
            {"converted_from": str(path_or_dir), "gguf_file": gguf_file, "dtype": "float32"},
            indent=2) + "\n")
        del model
        tmp.chmod(0o755)  # mkdtemp creates 0700; the cache may be shared
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not _is_complete(out_dir):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def model_dir(resolved: ResolvedModel) -> Path | None:
    """Local folder the model loads from (converting a GGUF file on first use); None for hub."""
    if resolved.kind == "local":
        folder = Path(resolved.source)
        if not folder.is_dir():
            raise ModelError(f"model folder '{resolved.name}' ({folder}) does not exist")
        check_local_folder(folder, resolved.name)
        return folder
    if resolved.kind == "gguf":
        assert resolved.gguf_file is not None
        return convert_gguf(resolved.source, resolved.gguf_file, gguf_cache_dir(resolved),
                            revision=resolved.revision)
    return None
