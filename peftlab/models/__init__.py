"""Model and tokenizer loading: hub id, local folder, GGUF file or alias, through one code path.

    from peftlab.models import resolve_model, load_tokenizer, load_classifier
    resolved = resolve_model("minilm")         # or "./my-model", "x.gguf", "owner/name"
    tokenizer = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)

One module per job:
- `resolve`: where a model comes from (no loading, no network), its weights' identifier, the
  messages for a model that cannot be fetched;
- `gguf`: a GGUF file dequantised once into a safetensors folder under the peftlab cache;
- `load`: config, tokenizer (that can always pad) and the sequence classifier; devices;
- `introspect`: encoder or decoder, head modules, linear layers, parameter counts.

Rules these modules enforce so that later stages never have to think about them:
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

from peftlab.models.gguf import convert_gguf, gguf_cache_dir, model_dir
from peftlab.models.introspect import (
    count_parameters,
    head_module_names,
    linear_module_names,
    model_family,
    param_count,
)
from peftlab.models.load import (
    classifier_class,
    classifier_from_config,
    load_classifier,
    load_config,
    load_tokenizer,
    resolve_device,
    saved_classifier_class,
)
from peftlab.models.resolve import (
    ALIAS_PACKAGES,
    ALIASES,
    KINDS,
    WEIGHT_SUFFIXES,
    ResolvedModel,
    cache_dir,
    minilm_package_dir,
    model_revision,
    portable_name,
    resolve_model,
    smollm2_gguf_path,
)

__all__ = [
    "ALIASES",
    "ALIAS_PACKAGES",
    "KINDS",
    "WEIGHT_SUFFIXES",
    "ResolvedModel",
    "cache_dir",
    "classifier_class",
    "classifier_from_config",
    "convert_gguf",
    "count_parameters",
    "gguf_cache_dir",
    "head_module_names",
    "linear_module_names",
    "load_classifier",
    "load_config",
    "load_tokenizer",
    "minilm_package_dir",
    "model_dir",
    "model_family",
    "model_revision",
    "param_count",
    "portable_name",
    "resolve_device",
    "resolve_model",
    "saved_classifier_class",
    "smollm2_gguf_path",
]
