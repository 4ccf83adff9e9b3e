"""Loading: config, tokenizer and the sequence classifier of a resolved model, through one code
path for every kind of source.

    tokenizer = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)

Rules enforced here so that later stages never have to think about them: weights are read as
safetensors only; every tokenizer can pad and the model config carries its pad id; decoder models
pad on the right unless asked otherwise; user-fixable problems raise `ModelError`.
"""

from __future__ import annotations

import logging
from typing import Any

from peftlab.errors import ModelError
from peftlab.models.gguf import model_dir
from peftlab.models.introspect import model_family
from peftlab.models.resolve import KINDS, ResolvedModel, first_line, hub_error, load_error

log = logging.getLogger(__name__)

_DTYPES = ("float32", "float16", "bfloat16", "auto")


# ---------------------------------------------------------------------------------------------
# Loading


def _location(resolved: ResolvedModel) -> tuple[str, dict[str, Any]]:
    """(path or hub id, extra from_pretrained kwargs) for every kind."""
    if resolved.kind not in KINDS:
        raise ModelError(f"model kind '{resolved.kind}' unknown; expected one of {KINDS}")
    folder = model_dir(resolved)
    if folder is not None:
        return str(folder), {}
    return resolved.source, ({"revision": resolved.revision} if resolved.revision else {})


def load_config(resolved: ResolvedModel, *, trust_remote_code: bool = False) -> Any:
    """The model's `PretrainedConfig` (no weights)."""
    from transformers import AutoConfig

    where, kwargs = _location(resolved)
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise load_error(resolved, "config", err) from err


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
        raise load_error(resolved, "tokenizer", err) from err

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
            raise hub_error(resolved, err) from err
        raise ModelError(f"cannot load the weights of {resolved.describe()}: expected "
                         f"*.safetensors files (peftlab reads safetensors only): "
                         f"{first_line(err)}") from err
    except (ValueError, KeyError) as err:
        raise ModelError(f"cannot build a sequence classifier from {resolved.describe()} "
                         f"(model type {config.model_type!r}): {first_line(err)}") from err
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
