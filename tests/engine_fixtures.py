"""A tiny causal Llama and two LoRA adapters on it, in folders an engine server loads.

The model is pretrained for a few steps on the tiny corpus (`build_tiny_llama(pretrain_steps=)`),
so its next-token distributions are peaked enough that greedy decoding does not hinge on float
rounding; head_dim 64, which vLLM's CPU attention supports. The adapters' B matrices are random
(`init_lora_weights=False`), so each adapter decodes differently from the base and the other.
"""

from __future__ import annotations

from pathlib import Path

ADAPTERS = ("a", "b")


def build_tiny_causal_with_adapters(out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftlab.testing import build_tiny_llama

    base = build_tiny_llama(out / "base", lm_head=True, hidden=128, heads=2, kv_heads=1,
                            intermediate=256, pretrain_steps=80)
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(10 + i)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"))
        peft.save_pretrained(out / name)
    return out


def greedy_ids(base: Path, adapter: Path | None, prompt: list[int], n: int) -> list[int]:
    """transformers' (and PEFT's) greedy continuation of `prompt`: n new token ids."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=model.config.eos_token_id)
    return out[0, len(prompt):].tolist()
