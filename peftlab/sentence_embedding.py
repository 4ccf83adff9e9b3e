"""A sentence-embedding classifier: the head a bi-encoder such as all-MiniLM-L6-v2 was trained for.

    model: {name: minilm, head: sentence-embedding}

transformers' `BertForSequenceClassification` reads the [CLS] token of the two texts of a pair
encoded jointly, through the pooler. A sentence-transformers bi-encoder was trained for none of
that: its pooler is left untrained and it never saw two texts in one sequence. This head reads
what the encoder was trained to produce, as Sentence-BERT does (Reimers & Gurevych, 2019):

- every text is encoded on its own and mean-pooled over its tokens, [CLS] and [SEP] included
  (sentence-transformers' `Pooling(mode="mean")`);
- one text (SST-2): its embedding -> `classifier`, a linear layer (hidden -> labels);
- a pair (MRPC, RTE): the cosine of the two embeddings -> `pair_classifier`, a linear layer
  (1 -> labels): the similarity the bi-encoder was trained to rank by, and no other feature, so
  a small training set fits it without over-fitting.

The input is what every other path in peftlab feeds a classifier: one sequence per example, the
tokenizer's own pair encoding ([CLS] a [SEP] b [SEP], token_type_ids 1 on b). The forward pass
splits each pair into its two texts, gives b a [CLS] of its own, and encodes all 2 x batch texts
in one call of the encoder (one call per side in PEFT's mixed-adapter batches, whose adapter
names are per input row): the same computation as encoding every text apart, by construction
(a test checks it against `BertModel` on each text alone). Training, PEFT adapters (the encoder is a
plain `BertModel` under `self.bert`; both heads go to `modules_to_save`), merging, the bench,
mixed single/pair batches and hidden-state extraction work unchanged. Hidden states come back in
the input's layout ([batch, length, hidden], each token where it stood in the joint sequence,
the extra [CLS] of b left out), so a pooling over the attention mask pools both texts.

Prompt-based adapters (PEFT's prompt tuning and p-tuning, the two whose sequence-classification
forward prepends virtual-token embeddings): PEFT calls this classifier with `inputs_embeds`
[batch, virtual + length, hidden] (the adapter's virtual tokens, then the word embeddings of the
input ids), the attention mask and token_type_ids extended by as many leading ones and zeros.
The forward takes the virtual tokens off the front (their number is the active adapter's
`num_virtual_tokens`, read from the PeftModel that `attach_peft` binds), splits the rest into
texts as it splits input ids, and puts the virtual tokens in front of each text: every text,
the second of a pair included, is encoded as [P1 .. Pv] [CLS] text [SEP], the text at positions
v.. as PEFT places it for any BERT model. The virtual tokens are not pooled: a text's embedding
is the mean over its own tokens, as without an adapter, so the probe-fitted head, fitted on the
frozen encoder's text-token means, reads the same kind of feature once the prompt is trained,
and a short text (an SST-2 sentence is about 12 tokens, the prompt 20) is not mostly the
prompt's states. For the same reason the hidden states come back without the virtual positions,
in the caller's layout ([batch, length, hidden] over the mask the caller holds): represent,
drift and the forgetting probes pool the text's tokens of the base and of every run alike, so a
run's representations compare position for position with the base's. Prefix tuning feeds every
layer a key/value prefix (`past_key_values`) instead, which this head does not pass to its
encoder; validation refuses it.

Written here because transformers has no classifier for a bi-encoder and sentence-transformers'
`SoftmaxLoss` head is a loss wrapper over its own `SentenceTransformer` model, not a
`PreTrainedModel` that Trainer, PEFT, `save_pretrained` and the bench take.

Saved artifacts hold the encoder in the form plain libraries load (`save_portable`), since no
transformers class has this head and a `SEQ_CLS` adapter would rebuild the [CLS]-pooler one:

    artifact/  model.safetensors + config.json (a `BertModel`, full fine-tuning)
               or adapter_config.json + adapter_model.safetensors (a FEATURE_EXTRACTION adapter
               of that `BertModel`), the tokenizer, modules.json + 1_Pooling/ (mean pooling:
               `SentenceTransformer(folder)` embeds),
               head.safetensors (classifier.{weight,bias} [labels, hidden], [labels];
               pair_classifier.{weight,bias} [labels, 1], [labels]) and head.json (what each
               layer reads; format HEAD_FORMAT).

`load_portable_full` and `load_portable_adapter` rebuild this classifier from them for peftlab's
own stages, with the same weights, so a reloaded run gives the logits it was evaluated with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

HEAD_NAMES = ("sequence-classification", "sentence-embedding")
# config.architectures[0] of a saved model with this head: how a saved full model is recognised
ARCHITECTURE = "BertForSentenceEmbeddingClassification"


def _gather(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions where `keep` is true, left-aligned per row: (positions [B, W], valid [B, W])
    with W the most kept positions of any row; positions past a row's count are arbitrary and
    marked invalid. Works under either padding side."""
    length = keep.shape[1]
    idx = torch.arange(length, device=keep.device).expand_as(keep)
    order = torch.argsort(torch.where(keep, idx, idx + length), dim=1)  # kept first, in order
    counts = keep.sum(dim=1)
    width = max(int(counts.max()), 1)
    valid = torch.arange(width, device=keep.device)[None] < counts[:, None]
    return order[:, :width], valid


def _mean(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    real = valid.unsqueeze(-1)
    counts = real.sum(dim=1).clamp(min=1).to(hidden.dtype)
    return hidden.masked_fill(~real, 0.0).sum(dim=1) / counts


class BertForSentenceEmbeddingClassification(BertPreTrainedModel):
    """A BERT-family bi-encoder with a sentence-embedding head (see the module docstring)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.pair_classifier = nn.Linear(1, config.num_labels)
        self.post_init()

    def embed(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
              token_type_ids: torch.Tensor | None = None, *, output_hidden_states: bool = False,
              tokens: torch.Tensor | None = None, prompt: torch.Tensor | None = None
              ) -> dict[str, Any]:
        """Each text of each row encoded on its own: {u, v (mean-pooled embeddings of a and b;
        v is meaningless where `paired` is false), paired [B] bool, hidden_states (joint layout)
        or None}.

        `input_ids` [B, L] or, from a prompt-based adapter, `tokens` [B, L, hidden] (the
        input ids' word embeddings) with `prompt` [B, v, hidden] (its virtual tokens, put in
        front of every text and not pooled; see the module docstring)."""
        if tokens is None:
            tokens = input_ids
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        real = attention_mask.bool()
        second = (token_type_ids.bool() if token_type_ids is not None
                  else torch.zeros_like(real)) & real
        pos_a, valid_a = _gather(real & ~second)
        pos_b, valid_b = _gather(second)
        paired = valid_b[:, 0]
        ids_a = _take(tokens, pos_a)
        cls = ids_a[:, :1]  # the row's first token: the tokenizer's [CLS]
        ids_b = torch.cat([cls, _take(tokens, pos_b)], dim=1)
        # a row without a second text still gets a one-token b ([CLS]) so no row is all padding
        valid_b1 = torch.cat([torch.ones_like(valid_b[:, :1]), valid_b], dim=1)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        pad = pad if tokens.dim() == 2 else 0.0  # embeddings: padded positions are masked out
        ids_a, ids_b = _blank(ids_a, ~valid_a, pad), _blank(ids_b, ~valid_b1, pad)
        n = tokens.shape[0]
        if not bool(paired.any()):  # single texts only: no b side to encode
            out_a, out_b = self._encode(ids_a, valid_a, output_hidden_states, prompt), None
        elif self._routed_per_row():
            # PEFT's mixed-adapter batch: adapter_names name the input's rows, checked and
            # routed by row inside every adapted layer, so each side is its own call of n rows
            out_a = self._encode(ids_a, valid_a, output_hidden_states, prompt)
            out_b = self._encode(ids_b, valid_b1, output_hidden_states, prompt)
        elif not self._pads_little(n, ids_a.shape[1], ids_b.shape[1]):
            out_a = self._encode(ids_a, valid_a, output_hidden_states, prompt)
            out_b = self._encode(ids_b, valid_b1, output_hidden_states, prompt)
        else:  # both sides in one call of 2n rows (fewer calls, little extra padding)
            width = max(ids_a.shape[1], ids_b.shape[1])
            both = self._encode(
                torch.cat([_pad_to(ids_a, width, pad), _pad_to(ids_b, width, pad)]),
                torch.cat([_pad_to(valid_a, width, False), _pad_to(valid_b1, width, False)]),
                output_hidden_states,
                torch.cat([prompt, prompt]) if prompt is not None else None)
            out_a = [h[:n, :ids_a.shape[1]] for h in both]
            out_b = [h[n:, :ids_b.shape[1]] for h in both]
        u = _mean(out_a[-1], valid_a)
        v = _mean(out_b[-1], valid_b1) if out_b is not None else u
        hidden = None
        if output_hidden_states:
            states_b = out_b if out_b is not None else [None] * len(out_a)
            hidden = tuple(self._joint(h_a, h_b, pos_a, valid_a, pos_b, valid_b,
                                       tokens.shape[1])
                           for h_a, h_b in zip(out_a, states_b, strict=True))
        return {"u": u, "v": v, "paired": paired, "hidden_states": hidden}

    def _encode(self, ids: torch.Tensor, valid: torch.Tensor, every_layer: bool,
                prompt: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder on right-padded rows (`ids` [B, W] token ids, or [B, W, hidden] word
        embeddings): every layer's hidden states (embeddings first) when `every_layer`, else the
        last layer's alone (a list of one), [B, W, hidden] each. `prompt` [B, v, hidden]: virtual
        tokens read in front of every row and left out of the states returned."""
        inputs = {"input_ids": ids} if ids.dim() == 2 else {"inputs_embeds": ids}
        if prompt is not None:
            inputs = {"inputs_embeds": torch.cat([prompt.to(ids.dtype), ids], dim=1)}
            valid = torch.cat([valid.new_ones(valid.shape[0], prompt.shape[1]), valid], dim=1)
        out = self.bert(**inputs, attention_mask=valid.long(), output_hidden_states=every_layer)
        states = list(out.hidden_states) if every_layer else [out.last_hidden_state]
        skip = prompt.shape[1] if prompt is not None else 0
        return [h[:, skip:] for h in states] if skip else states

    @staticmethod
    def _pads_little(rows: int, width_a: int, width_b: int) -> bool:
        """Whether one call of both sides (each padded to the wider) is the cheaper way: always
        for one row, where the per-call overhead dominates on CPU, else when it pads at most 30%
        more tokens than two calls (long premises with short hypotheses, as in RTE, would nearly
        double the tokens of a training batch)."""
        return rows == 1 or 2 * max(width_a, width_b) <= 1.3 * (width_a + width_b)

    def _routed_per_row(self) -> bool:
        """Whether PEFT routes adapters per row in this forward pass (a mixed-adapter batch,
        `adapter_names=`): PEFT then hangs a forward pre-hook carrying the names on every
        adapted layer (`functools.partial(..., adapter_names=...)`, peft 0.21). A test serves a
        mixed batch of a single and a pair task through this path."""
        for module in self.bert.modules():
            for hook in module._forward_pre_hooks.values():
                if "adapter_names" in (getattr(hook, "keywords", None) or {}):
                    return True
        return False

    @staticmethod
    def _joint(h_a: torch.Tensor, h_b: torch.Tensor | None, pos_a: torch.Tensor, valid_a: torch.Tensor,
               pos_b: torch.Tensor, valid_b: torch.Tensor, length: int) -> torch.Tensor:
        """Hidden states of the separately encoded texts put back where each token stood in the
        joint input (b's own [CLS] dropped); padded positions are zero. scatter_add with the
        invalid slots zeroed: each real position receives exactly one contribution."""
        out = h_a.new_zeros(h_a.shape[0], length, h_a.shape[-1])
        size = h_a.shape[-1]
        wa, wb = pos_a.shape[1], pos_b.shape[1]
        out.scatter_add_(1, pos_a[..., None].expand(-1, -1, size),
                         h_a[:, :wa] * valid_a[..., None].to(h_a.dtype))
        if h_b is not None:
            out.scatter_add_(1, pos_b[..., None].expand(-1, -1, size),
                             h_b[:, 1:1 + wb] * valid_b[..., None].to(h_b.dtype))
        return out

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,  # noqa: ARG002 - each text restarts at 0
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        """Logits [batch, num_labels] (a single text's row from `classifier`, a pair's from
        `pair_classifier`), the loss when `labels` are given, hidden states in the input's
        layout when asked. position_ids, return_dict and other keyword arguments transformers
        and PEFT pass along are accepted and not used (each text's positions restart at 0, or
        at v after a prompt-based adapter's v virtual tokens). `inputs_embeds` [B, v + L,
        hidden]: from a prompt-based adapter only (see the module docstring)."""
        inputs_embeds = kwargs.get("inputs_embeds")
        prompt = None
        if inputs_embeds is not None:  # a prompt-based adapter's virtual tokens, then the text
            virtual = self._virtual_tokens()
            if virtual is None:
                raise ValueError(
                    "BertForSentenceEmbeddingClassification splits each pair into its two texts "
                    "by token: inputs_embeds are taken only from a prompt-based PEFT adapter "
                    "bound by sentence_embedding.attach_peft (its virtual tokens come first)")
            prompt = inputs_embeds[:, :virtual] if virtual else None
            inputs_embeds = inputs_embeds[:, virtual:]
            if attention_mask is not None:
                attention_mask = attention_mask[:, virtual:]
            if token_type_ids is not None:
                token_type_ids = token_type_ids[:, virtual:]
        emb = self.embed(input_ids if inputs_embeds is None else None, attention_mask,
                         token_type_ids, output_hidden_states=bool(output_hidden_states),
                         tokens=inputs_embeds, prompt=prompt)
        feats = self._head_inputs(emb)
        single = self.classifier(feats["single"])
        pair = self.pair_classifier(feats["pair"].to(self.pair_classifier.weight.dtype))
        logits = torch.where(feats["paired"][:, None], pair, single)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits,
                                        hidden_states=emb["hidden_states"])

    def _virtual_tokens(self) -> int | None:
        """How many virtual tokens lead `inputs_embeds`: the active adapter's
        `num_virtual_tokens` in the PeftModel `attach_peft` bound (0 for an adapter that is not
        prompt-based); None when none is bound."""
        ref = getattr(self, "_peftlab_owner", None)
        owner = ref() if ref is not None else None
        if owner is None:
            return None
        config = owner.active_peft_config
        return int(config.num_virtual_tokens) if config.is_prompt_learning else 0

    def head_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What each head reads, for fitting it on frozen features: {paired [B], single [B, H],
        pair [B, 1]}."""
        return self._head_inputs(self.embed(input_ids, attention_mask, token_type_ids))

    @staticmethod
    def _head_inputs(emb: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`embed`'s output as the heads read it: a single text's embedding, a pair's cosine."""
        cosine = F.cosine_similarity(emb["u"], emb["v"], dim=-1).unsqueeze(-1)
        return {"paired": emb["paired"], "single": emb["u"], "pair": cosine}


def _take(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """tokens[b, pos[b, j]] per row: ids [B, L] -> [B, W]; embeddings [B, L, H] -> [B, W, H]."""
    if tokens.dim() == 2:
        return torch.gather(tokens, 1, pos)
    return torch.gather(tokens, 1, pos[..., None].expand(-1, -1, tokens.shape[-1]))


def _blank(tokens: torch.Tensor, where: torch.Tensor, value: Any) -> torch.Tensor:
    """`tokens` ([B, W] or [B, W, H]) with the positions `where` [B, W] set to `value`."""
    return tokens.masked_fill(where if tokens.dim() == 2 else where[..., None], value)


def _pad_to(tokens: torch.Tensor, width: int, value: Any) -> torch.Tensor:
    """`tokens` ([B, W] or [B, W, H]) right-padded with `value` to `width` positions."""
    extra = width - tokens.shape[1]
    return F.pad(tokens, (0, extra) if tokens.dim() == 2 else (0, 0, 0, extra), value=value)


def attach_peft(model: Any) -> Any:
    """Bind a PeftModel to the classifier it wraps, so that a prompt-based adapter's forward
    (PEFT passes `inputs_embeds` with the virtual tokens first) finds how many virtual tokens
    lead (the active adapter's `num_virtual_tokens`, read at each call). A weak reference: the
    PeftModel holds the classifier, not the other way round. Anything else passes unchanged.
    Returns `model`."""
    import weakref

    inner = model.get_base_model() if hasattr(model, "get_base_model") else None
    if isinstance(inner, BertForSentenceEmbeddingClassification):
        inner._peftlab_owner = weakref.ref(model)
    return model


def saved_head(folders: list[str]) -> str:
    """The model.head that saved adapter or full-model `folders` were trained with:
    "sentence-embedding" when any of them holds this head (head.json beside the encoder; in
    artifacts saved before that layout, a full model's config names the class and an adapter
    saves `pair_classifier` among its modules_to_save), else the default."""
    import json
    from pathlib import Path

    for folder in folders:
        if is_portable(folder):
            return "sentence-embedding"
        for name, key in (("config.json", "architectures"),
                          ("adapter_config.json", "modules_to_save")):
            path = Path(folder) / name
            try:
                values = json.loads(path.read_text(encoding="utf-8")).get(key) or []
            except (OSError, ValueError):
                continue
            if ARCHITECTURE in values or "pair_classifier" in values:
                return "sentence-embedding"
    return "sequence-classification"


# ------------------------------------------------------------------ the artifact plain libraries load

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
HEAD_FORMAT = "peftlab/sentence-embedding-head/v1"
HEAD_MODULES = ("classifier", "pair_classifier")
ENCODER_WEIGHTS = "model.safetensors"
_ADAPTER_CONFIG, _ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PEFT = "base_model.model."  # PEFT's prefix of every saved tensor name
_PROMPT_PEFT = "base_model."  # ... of a prompt-based adapter's head (it wraps the model itself)
_BERT = "bert."  # where the classifier keeps its encoder (BertPreTrainedModel.base_model_prefix)
_ENCODER_CHILDREN = ("embeddings", "encoder", "pooler")  # top-level modules of a BertModel
# PEFT config fields that name modules of the model they were made for
_MODULE_LISTS = ("target_modules", "feedforward_modules", "exclude_modules")
_MODULE_DICTS = ("rank_pattern", "alpha_pattern")


def is_portable(folder: Any) -> bool:
    """Whether `folder` holds this head in the layout `save_portable` writes (head.json)."""
    from pathlib import Path

    return (Path(folder) / HEAD_CONFIG).is_file()


def _is_head(name: str) -> bool:
    return name.split(".")[0] in HEAD_MODULES


def _saved_head_name(key: str) -> str | None:
    """The head tensor a PEFT-saved tensor name stands for ("classifier.weight"), else None.
    PEFT saves a tuner's head under "base_model.model.<head>" and a prompt-based adapter's,
    which wraps the model itself, under "base_model.<head>"."""
    for prefix in (_PEFT, _PROMPT_PEFT):
        if key.startswith(prefix) and _is_head(key[len(prefix):]):
            return key[len(prefix):]
    return None


def _to_encoder_path(name: str) -> str:
    """A module path of the classifier as the bare `BertModel` names it ("bert.encoder.x" ->
    "encoder.x"); suffix patterns ("query") are the same in both."""
    for prefix in (_PEFT + _BERT, _BERT):
        if name.startswith(prefix):
            return prefix[: -len(_BERT)] + name[len(prefix):]
    return name


def _to_classifier_path(name: str) -> str:
    """The inverse of `_to_encoder_path` (AdaLoRA's rank_pattern needs exact paths)."""
    for prefix in (_PEFT, ""):
        rest = name[len(prefix):] if name.startswith(prefix) else None
        if rest is not None and rest.split(".")[0] in _ENCODER_CHILDREN:
            return prefix + _BERT + rest
    return name


def _rename_modules(config: dict[str, Any], rename: Any) -> dict[str, Any]:
    """`config` (an adapter_config.json dict) with every module path renamed, head modules
    dropped (the head is stored in head.safetensors, not as an adapted or saved module)."""
    out = dict(config)
    for key in _MODULE_LISTS:
        if isinstance(out.get(key), (list, set)):
            out[key] = type(out[key])(rename(m) for m in out[key] if not _is_head(m))
    for key in _MODULE_DICTS:
        if isinstance(out.get(key), dict):
            out[key] = {rename(m): v for m, v in out[key].items() if not _is_head(m)}
    return out


def save_portable(folder: Any, *, max_length: int) -> None:
    """Rewrite an artifact of this classifier, as `save_pretrained` (full model) or PEFT
    (adapter with both heads in modules_to_save) wrote it into `folder`, into the layout plain
    libraries load (see the module docstring); a folder already in that layout is left alone.
    Tensors are moved, not recomputed: the encoder, adapter and head weights are bitwise those
    of the trained model.

    max_length: the tokens each text was truncated to (sentence-transformers' max_seq_length).
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    if is_portable(folder):
        return
    virtual = 0  # a prompt-based adapter's virtual tokens
    if (folder / _ADAPTER_CONFIG).is_file():
        tensors = load_file(folder / _ADAPTER_WEIGHTS)
        head = {_saved_head_name(k): t for k, t in tensors.items() if _saved_head_name(k)}
        adapter = {_to_encoder_path(k): t for k, t in tensors.items()
                   if not _saved_head_name(k)}
        save_file(adapter, folder / _ADAPTER_WEIGHTS, metadata={"format": "pt"})
        config = _rename_modules(json.loads((folder / _ADAPTER_CONFIG).read_text("utf-8")),
                                 _to_encoder_path)
        # an adapter of the bare encoder: AutoPeftModel builds AutoModel (BertModel) for it
        config.update(task_type="FEATURE_EXTRACTION", modules_to_save=None)
        _write_json(folder / _ADAPTER_CONFIG, config)
        virtual = int(config.get("num_virtual_tokens") or 0)
        hidden = int(head["classifier.weight"].shape[1])
    else:
        files = sorted(folder.glob("model*.safetensors"))
        tensors = {k: t for f in files for k, t in load_file(f).items()}
        head = {k: t for k, t in tensors.items() if _is_head(k)}
        encoder = {k[len(_BERT):]: t for k, t in tensors.items() if k.startswith(_BERT)}
        if len(head) + len(encoder) != len(tensors):
            raise ValueError(f"{folder}: tensors of neither the encoder nor the head: "
                             f"{sorted(set(tensors) - set(head) - {_BERT + k for k in encoder})}")
        for f in files:
            f.unlink()
        (folder / "model.safetensors.index.json").unlink(missing_ok=True)
        save_file(encoder, folder / ENCODER_WEIGHTS, metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text("utf-8"))
        config["architectures"] = ["BertModel"]
        _write_json(folder / "config.json", config)
        hidden = int(config["hidden_size"])
    save_file(head, folder / HEAD_WEIGHTS, metadata={"format": "pt"})
    labels = int(head["classifier.weight"].shape[0])
    _write_json(folder / HEAD_CONFIG, {
        "format": HEAD_FORMAT,
        "embedding": "each text encoded alone ([CLS] text [SEP]), the encoder's last hidden "
                     "states averaged over the attention mask (special tokens included)",
        "single_text": {"reads": f"the text's embedding [{hidden}]",
                        "logits": "classifier.weight @ embedding + classifier.bias",
                        "shapes": {"classifier.weight": [labels, hidden],
                                   "classifier.bias": [labels]}},
        "text_pair": {"reads": "the cosine similarity of the two texts' embeddings [1]",
                      "logits": "pair_classifier.weight @ [cosine] + pair_classifier.bias",
                      "shapes": {"pair_classifier.weight": [labels, 1],
                                 "pair_classifier.bias": [labels]}},
        "max_length": max_length,
        "truncation": "a pair is tokenised as one sequence ([CLS] a [SEP] b [SEP], "
                      "truncation longest_first to max_length) and then split into its texts: "
                      "a = the tokens of type 0, b = [CLS] + the tokens of type 1",
        **({"virtual_tokens": f"the adapter's {virtual} virtual tokens (prompt_embeddings) are "
                              "read before each text ([P1 .. Pv] [CLS] text [SEP], the text at "
                              "positions v..) and left out of the mean"} if virtual else {}),
    })
    # sentence-transformers' description of the same encoder: mean pooling, no normalisation
    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}])
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": max_length, "do_lower_case": False})
    (folder / "1_Pooling").mkdir(exist_ok=True)
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})


def _write_json(path: Any, data: Any) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _head_tensors(folder: Any) -> dict[str, torch.Tensor]:
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(Path(folder) / HEAD_WEIGHTS)


def portable_adapter_shapes(folder: Any, adapter: dict[str, list[int]]) -> dict[str, list[int]]:
    """Tensor name -> shape of a `save_portable` adapter (`adapter`: its adapter_model
    shapes) and head, named as in an adapter of the classifier ("base_model.model.bert.encoder.
    ...", "base_model.model.classifier.weight"): what a check against the classifier reads."""
    from pathlib import Path

    from safetensors import safe_open

    out = {_PEFT + _BERT + k[len(_PEFT):] if k.startswith(_PEFT) else k: v
           for k, v in adapter.items()}
    with safe_open(str(Path(folder) / HEAD_WEIGHTS), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118
            out[_PEFT + key] = list(f.get_slice(key).get_shape())
    return out


def load_portable_full(folder: Any, *, dtype: torch.dtype, device: Any
                       ) -> BertForSentenceEmbeddingClassification:
    """The fully fine-tuned classifier from a `save_portable` folder, in eval mode on `device`."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    config.architectures = [ARCHITECTURE]
    model = BertForSentenceEmbeddingClassification._from_config(config, dtype=dtype)
    state = {_BERT + k: t for k, t in load_file(folder / ENCODER_WEIGHTS).items()}
    state.update(_head_tensors(folder))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_portable_adapter(model: Any, folder: Any, *, adapter_name: str) -> Any:
    """A `save_portable` adapter loaded onto `model` (this classifier, or a PeftModel on it that
    gets one more adapter) as peftlab trained it: the adapter on `model.bert`, both heads in
    `modules_to_save` (so mixed-adapter batches read each adapter's own head). Returns the
    PeftModel; the new adapter is frozen and not made active."""
    from pathlib import Path

    from peft import PeftConfig, PeftModel, load_peft_weights, set_peft_model_state_dict

    folder = Path(folder)
    config = PeftConfig.from_pretrained(str(folder))
    renamed = _rename_modules(config.to_dict(), _to_classifier_path)
    for key in (*_MODULE_LISTS, *_MODULE_DICTS):
        if hasattr(config, key):
            setattr(config, key, renamed.get(key))
    config.task_type = "SEQ_CLS"
    config.modules_to_save = list(HEAD_MODULES)
    config.inference_mode = True
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
    else:
        from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

        model = MODEL_TYPE_TO_PEFT_MODEL_MAPPING["SEQ_CLS"](model, config, adapter_name)
    if config.is_prompt_learning:  # its one tensor, the virtual tokens, names no module
        state = load_peft_weights(str(folder), device="cpu")
        head_prefix = _PROMPT_PEFT
    else:
        # PEFT maps each tensor name without its "base_model.model." prefix: encoder ->
        # bert.encoder
        state = load_peft_weights(str(folder), device="cpu", key_mapping={"^": _BERT})
        # ... and a tuner's model-level tensors (VeRA's shared vera_A / vera_B:
        # "base_model.vera_A") without the encoder: they are no module of it, so they keep
        # their own name
        shared = "base_model." + _BERT
        state = {("base_model." + k[len(shared):] if k.startswith(shared) else k): t
                 for k, t in state.items()}
        head_prefix = _PEFT
    state.update({head_prefix + k: t for k, t in _head_tensors(folder).items()})
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    attach_peft(model)
    # every trained tensor of this adapter (the tuner's own, e.g. lora_*, and the heads) must
    # have been loaded; buffers PEFT does not save (AdaLoRA's ranknum) are not among them
    trained = (getattr(model.base_model, "prefix", None) or "lora_", "modules_to_save")
    missing = [k for k in result.missing_keys
               if f".{adapter_name}." in f"{k}." and any(t in k for t in trained)]
    # PEFT loads a prompt-based adapter's virtual tokens into its prompt encoder itself, after
    # a load_state_dict that reports them unexpected
    unexpected = [k for k in result.unexpected_keys
                  if not (config.is_prompt_learning and k == "prompt_embeddings")]
    if missing or unexpected:
        raise ValueError(f"{folder}: the adapter does not fit the model: missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return model


# ------------------------------------------------------------------ the head fitted on frozen features


def _fit_linear(x: np.ndarray, y: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight [num_labels, d], bias [num_labels]) of a linear layer fitted to (x, y): logistic
    regression (classes) or ridge regression (num_labels 1), both sklearn's, on centred features
    divided by one scale, their root-mean-square over every dimension (so the penalty does not
    depend on the features' overall scale: a cosine that moves by 0.1 needs a weight near 20),
    folded back into the raw features' weight and bias.

    One scale for all dimensions, not one per dimension: a dimension that barely varies over the
    training rows (all-MiniLM-L6-v2's mean-pooled embeddings have one with standard deviation 0)
    would, standardised on its own, carry a raw weight of hundreds (coefficient / its tiny sd),
    harmless on the frozen features and ruinous once fine-tuning moves that dimension at all."""
    from sklearn.linear_model import LogisticRegression, Ridge

    mu = x.mean(axis=0)
    sd = max(float(np.sqrt(np.mean((x - mu) ** 2))), 1e-6)
    z = (x - mu) / sd
    if num_labels == 1:
        reg = Ridge(alpha=1.0).fit(z, y.astype(float))
        coef, intercept = reg.coef_.reshape(1, -1), np.atleast_1d(reg.intercept_)
    else:
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(z, y)
        if len(clf.classes_) == 2:  # one logit difference, split evenly between the two rows
            c, b = clf.coef_[0] / 2, clf.intercept_[0] / 2
            coef, intercept = np.stack([-c, c]), np.array([-b, b])
        else:
            coef, intercept = clf.coef_, clf.intercept_
        if len(clf.classes_) < num_labels:  # a class absent from the training rows: never chosen
            full_coef = np.zeros((num_labels, x.shape[1]))
            full_bias = np.full(num_labels, float(intercept.min()) - 10.0)
            full_coef[clf.classes_], full_bias[clf.classes_] = coef, intercept
            coef, intercept = full_coef, full_bias
    weight = coef / sd
    return weight, intercept - weight @ mu


def fit_heads(model: Any, dataset: Any, tokenizer: Any, *, batch_size: int, device: Any,
              pad_to: int | None = None) -> dict[str, Any]:
    """Fit both heads on the frozen encoder's features of `dataset` (an `encode_frame` dataset
    with labels): the linear-probe step of LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort
    Pretrained Features and Underperform Out-of-Distribution"), after which fine-tuning starts
    from a head that already reads the features instead of a random one.

    Needed here, not only better: a random `pair_classifier` must grow a weight near 20 on the
    cosine before it separates anything, which Adam at 1e-4..1e-3 per step cannot do in the few
    dozen steps of a small study. Each head is fitted on the rows it reads (single texts or
    pairs); a head with no rows, or with rows of one class only, keeps its initialisation.
    Returns {head: {examples, fitted, train_accuracy or reason}}.
    """
    from peftlab.encode import iter_batches

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, BertForSentenceEmbeddingClassification):
        raise TypeError(f"fit_heads needs a BertForSentenceEmbeddingClassification, got "
                        f"{type(inner).__name__}")
    was_training = inner.training
    inner.eval()
    parts: dict[str, list[np.ndarray]] = {"paired": [], "single": [], "pair": []}
    with torch.inference_mode():
        for batch in iter_batches(dataset, tokenizer, batch_size, device, pad_to):
            feats = inner.head_features(**batch)
            for key in parts:
                parts[key].append(feats[key].float().cpu().numpy())
    inner.train(was_training)
    paired = np.concatenate(parts["paired"]).astype(bool)
    labels = np.asarray(dataset["labels"])
    num_labels = inner.num_labels
    report: dict[str, Any] = {}
    for name, rows, x in (("classifier", ~paired, np.concatenate(parts["single"])),
                          ("pair_classifier", paired, np.concatenate(parts["pair"]))):
        n = int(rows.sum())
        if n == 0:
            continue
        y = labels[rows]
        if num_labels > 1 and len(np.unique(y)) < 2:
            report[name] = {"examples": n, "fitted": False, "reason": "one class only"}
            continue
        weight, bias = _fit_linear(x[rows], y, num_labels)
        head = getattr(inner, name)
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        out = x[rows] @ weight.T + bias
        entry: dict[str, Any] = {"examples": n, "fitted": True}
        if num_labels > 1:
            entry["train_accuracy"] = round(float((out.argmax(axis=1) == y).mean()), 4)
        report[name] = entry
    return report
