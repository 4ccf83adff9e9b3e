"""Model folders an engine server loads: the base, LoRA adapters, merged and full models.

    base = base_folder(resolved)                          # HF folder (a GGUF converted once)
    ad = served_adapter(artifact_dir, out / "adapters" / "sst2-s42")
    merged = merged_folder(base, ad, out / "merged" / "sst2-s42")
    full = full_folder(full_artifact_dir, out / "full" / "sst2-s42")
    ads = synthetic_adapters(base, out / "synthetic", k=8, r=8, targets=["q_proj", "v_proj"])

Engines serve causal language models from Hugging Face folders and LoRA adapters in PEFT's
format. A study's runs are classifiers: an adapter run saves the LoRA matrices of the body plus
the trained head (`modules_to_save`), a full run a whole `...ForSequenceClassification`. For
serving, the body is what costs: `served_adapter` keeps the adapter's LoRA matrices and drops
the head (the engine decodes through the base's LM head), `full_folder` saves the fine-tuned body
with the base's LM head as a `...ForCausalLM`. A generation study's runs are causal LMs already:
their adapters keep everything but a head they do not have, their full models serve as saved. The GGUF base is dequantised into a float32 folder
by `peftlab.models.gguf` (the same folder peftlab trains from). Each function writes its folder
once (atomically: a temporary sibling renamed when complete) and returns an existing one as is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftlab.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DONE = "peftlab_served.json"


def base_folder(resolved: Any) -> Path:
    """The base model's local Hugging Face folder (a GGUF file converted once, cached)."""
    from peftlab.models import model_dir

    folder = model_dir(resolved)
    if folder is None:
        raise ModelError(f"{resolved.describe()}: an engine server needs the model in a local "
                         "folder (a hub model must be downloaded first)")
    return Path(folder)


def _write_once(out: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    out = Path(out)
    if (out / DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        info = build(tmp)
        (tmp / DONE).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def served_adapter(artifact: str | Path, out: str | Path) -> Path:
    """A PEFT LoRA folder of `artifact`'s body for a causal LM: lora_A/lora_B weights only
    (the classification head and any modules_to_save dropped), task_type CAUSAL_LM."""
    from safetensors.torch import load_file, save_file

    src = Path(artifact)
    if not (src / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{src}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")

    def build(tmp: Path) -> dict[str, Any]:
        config = json.loads((src / ADAPTER_CONFIG).read_text())
        if config.get("peft_type") != "LORA":
            raise ModelError(f"{src}: a {config.get('peft_type')} adapter; engines serve LoRA "
                             "adapters only")
        weights = load_file(str(src / ADAPTER_WEIGHTS))
        kept = {k: v.contiguous() for k, v in weights.items()
                if ".lora_A." in k or ".lora_B." in k}
        if not kept:
            raise ModelError(f"{src}: the adapter has no LoRA matrices")
        config.update({"task_type": "CAUSAL_LM", "modules_to_save": None,
                       "base_model_name_or_path": None})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(kept, str(tmp / ADAPTER_WEIGHTS))
        return {"from": str(src), "kept_tensors": len(kept),
                "dropped": sorted(k for k in weights if k not in kept)[:20], "rank": config["r"]}

    return _write_once(Path(out), build)


def _copy_tokenizer(base: Path, out: Path) -> None:
    for f in base.iterdir():
        if f.is_file() and ("token" in f.name or f.name in ("special_tokens_map.json",
                                                              "chat_template.jinja")):
            shutil.copy2(f, out / f.name)


def merged_folder(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """`adapter` (a served adapter folder) merged into `base` (W + scale B A), saved as a
    causal LM folder with the base's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def build(tmp: Path) -> dict[str, Any]:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.save_pretrained(tmp)
        _copy_tokenizer(Path(base), tmp)
        return {"base": str(base), "adapter": str(adapter)}

    return _write_once(Path(out), build)


def full_folder(artifact: str | Path, out: str | Path, *, base: str | Path) -> Path:
    """A full fine-tuning run as a causal LM folder: a generation run's artifact as it is (a
    causal LM with its tokenizer); a classifier's body with the base's LM head (the run never
    trained one), written to `out`."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    config = json.loads((Path(artifact) / "config.json").read_text()) \
        if (Path(artifact) / "config.json").is_file() else {}
    if all(a.endswith("ForCausalLM") for a in config.get("architectures") or ["?"]) and \
            (Path(artifact) / "tokenizer_config.json").is_file():
        return Path(artifact)

    def build(tmp: Path) -> dict[str, Any]:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        body = AutoModel.from_pretrained(str(artifact), dtype=torch.float32)
        missing, _ = model.base_model.load_state_dict(body.state_dict(), strict=False)
        if missing:
            raise ModelError(f"{artifact}: the fine-tuned body lacks {missing[:5]}")
        model.save_pretrained(tmp)
        _copy_tokenizer(Path(base), tmp)
        return {"from": str(artifact), "lm_head": f"the base's ({base})"}

    return _write_once(Path(out), build)


def synthetic_adapters(base: str | Path, out: str | Path, *, k: int, r: int = 8,
                       targets: list[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """k LoRA adapters on `base` with random A and B (PEFT's init_lora_weights=False): the
    serving cost of an adapter depends on its rank and targets, not on what it learned. For
    runs without a study's adapters (tests, the engine's own scenarios)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out)
    folders = {}
    for i in range(k):
        name = f"synthetic-{i}"

        def build(tmp: Path, i: int = i) -> dict[str, Any]:
            torch.manual_seed(seed + i)
            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
            peft = get_peft_model(model, LoraConfig(
                r=r, lora_alpha=2 * r, init_lora_weights=False,
                target_modules=targets or ["q_proj", "v_proj"], task_type="CAUSAL_LM"))
            peft.save_pretrained(tmp)
            return {"synthetic": True, "seed": seed + i, "rank": r}

        folders[name] = _write_once(out / name, build)
    return folders
