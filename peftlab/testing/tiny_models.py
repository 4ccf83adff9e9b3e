"""Tiny models and tokenizers for tests and benchmarks, built from configs with no network.

    from peftlab.testing import build_tiny_llama, build_tiny_bert
    folder = build_tiny_llama(tmp_path / "tiny-llama")      # ~0.1 M parameters, loads in ms
    model = load_classifier(resolve_model(str(folder)), num_labels=2)

Both builders write a normal transformers folder (config.json, model.safetensors, tokenizer files),
so the code under test loads them exactly like a real model. Same arguments and seed -> same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# A fixed English corpus (movie reviews, paraphrase and entailment style sentences) the tiny
# tokenizers are trained on. Kept in code so the vocabulary never changes between machines.
_CORPUS = """
the movie was a delight from start to finish and the cast was wonderful
a dull and lifeless film that never finds its footing
it is one of the best films of the year , funny , moving and smart
the plot is thin , the jokes fall flat and the ending is a mess
an intelligent , beautifully acted drama about family and loss
i would not recommend this to anyone who values their time
the director makes bold choices that mostly pay off
a charming little story with a big heart
the characters are flat and the dialogue is painfully bad
visually stunning but emotionally empty
a warm , witty and surprisingly touching comedy
this is the worst sequel i have seen in a long time
the performances are strong even when the script is weak
it drags in the middle but the last act is thrilling
nothing new here , but it is done with care and skill
the company said on monday that its profit rose in the third quarter
shares of the bank fell after the report was released
the government announced new rules for the energy market
officials said the talks would continue next week
the storm caused damage to hundreds of homes along the coast
police arrested two men in connection with the robbery
the president met with leaders of several countries at the summit
the new law will take effect at the start of next year
researchers found that the drug reduced the risk of heart disease
the team won the game with a goal in the final minute
the museum will open a new exhibition of modern art in the spring
a man is playing a guitar on the street
a woman is reading a book in the park
the children are playing football in the garden
the dog is running after a red ball
a group of people are sitting around a table and talking
the cat sleeps on the warm window sill
two students are studying for an exam in the library
the city council approved the budget for the coming year
prices of oil and gas increased sharply this month
the writer published her first novel at the age of twenty
the old bridge was closed for repairs after the flood
scientists discovered a new species of bird in the forest
the airline cancelled many flights because of the snow
he said that the decision was made after long discussions
she did not agree with the proposal and left the meeting
the report says that unemployment fell to its lowest level
if it rains tomorrow , the match will be played indoors
the teacher explained the lesson slowly and clearly
our neighbours moved to another town last summer
the film is not bad , it is just not very good either
yes , no , maybe , always , never , sometimes , often , rarely
one two three four five six seven eight nine ten hundred thousand million
monday tuesday wednesday thursday friday saturday sunday
january february march april may june july august september october november december
good great excellent fine nice better best happy glad love like enjoy
bad poor awful terrible worse worst sad angry hate boring dull weak
is was are were be been being have has had do does did will would can could should
a an the this that these those it its he she they we you i me him her them us
and or but because so although while when where why how what who which
in on at by for with about against between into through during before after
above below to from up down out off over under again further then once here there
""".strip().splitlines()

_LLAMA_SPECIAL = ("<unk>", "<s>", "</s>")
_BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _training_lines() -> list[str]:
    # Capitalised and punctuated variants teach the tokenizers the shapes real text has
    # (GLUE text is mixed case with punctuation), still from the same fixed corpus.
    lines = list(_CORPUS)
    lines += [line.capitalize() + "." for line in _CORPUS]
    lines += [line.title() + "!" for line in _CORPUS[:20]]
    lines += ["'s n't 're 've 'll 'd - -- ( ) \" ; : ? ! 0 1 2 3 4 5 6 7 8 9 % $"]
    return lines


def build_tiny_tokenizer(
    kind: str, out_dir: str | Path | None = None, *, vocab_size: int = 512, with_pad: bool = True,
    lines: Iterable[str] | None = None,
) -> Any:
    """Train a small fast tokenizer on the fixed corpus; save it to `out_dir` when given.

    lines: train on these texts instead of the fixed corpus (benchmarks/gpu_check.py trains a
    32000-entry BPE on GLUE text); `vocab_size` is then an upper bound the trainer may not reach.

    kind "llama": byte-level BPE (like SmolLM2), <s> added at the start, no separator token,
    pad = eos = "</s>" (`with_pad=False` leaves it without a pad token, like TinyLlama's).
    kind "bert": lower-cased WordPiece with [CLS] a [SEP] b [SEP], token_type_ids, pad = [PAD].
    Returns a `PreTrainedTokenizerFast` (transformers 5 calls it `TokenizersBackend`).
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "llama":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(_LLAMA_SPECIAL),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_training_lines() if lines is None else lines, trainer=trainer)
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)])
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="</s>" if with_pad else None,
            padding_side="right",
            model_max_length=512,
            model_input_names=["input_ids", "attention_mask"],
        )
    elif kind == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(_BERT_SPECIAL), show_progress=False)
        tok.train_from_iterator(_training_lines() if lines is None else lines, trainer=trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            unk_token="[UNK]",
            mask_token="[MASK]",
            padding_side="right",
            model_max_length=512,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    else:
        raise ValueError(f"kind must be 'llama' or 'bert', got {kind!r}")
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped


def _save_seeded(build: Any, seed: int, out_dir: Path, tokenizer: Any) -> Path:
    """Build the model under a private RNG state (the caller's global RNG is left untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_llama(
    out_dir: str | Path,
    *,
    num_labels: int = 2,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    lm_head: bool = False,
    pretrain_steps: int = 0,
) -> Path:
    """A random LlamaForSequenceClassification (+ tokenizer) saved as safetensors in `out_dir`.

    Grouped-query attention (kv_heads < heads), so q_proj is [hidden, hidden] while k_proj/v_proj
    are [kv_heads * head_dim, hidden] (64x64 vs 32x64 by default), as in TinyLlama/SmolLM2.
    The classification head `score` is [num_labels, hidden] without bias.

    lm_head=True saves a LlamaForCausalLM instead (an untied `lm_head` [vocab, hidden], like
    TinyLlama's checkpoint), which `load_classifier` loads with a fresh `score` head;
    pretrain_steps > 0 first trains it as a language model on the fixed corpus (Adam, lr 3e-3,
    batches of 16 lines), so its LM loss is that of a model that learned something: 80 steps
    (about 2 s on one core) take the corpus loss from ln(vocab) = 6.2 to about 1.3 nats per
    token (the small corpus is largely memorised; unrelated text, e.g. SST-2, stays near 6).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = build_tiny_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else "single_label_classification",
    )
    if pretrain_steps and not lm_head:
        raise ValueError("pretrain_steps needs lm_head=True (it trains the LM head)")
    if not lm_head:
        return _save_seeded(lambda: LlamaForSequenceClassification(config), seed, Path(out_dir),
                            tokenizer)
    return _save_seeded(lambda: _pretrained(LlamaForCausalLM(config), tokenizer, pretrain_steps),
                        seed, Path(out_dir), tokenizer)


def _pretrained(model: Any, tokenizer: Any, steps: int) -> Any:
    """`model` trained `steps` Adam steps as a causal LM on the fixed corpus (under the caller's
    RNG state, so the same seed gives the same weights)."""
    import torch

    if steps <= 0:
        return model
    lines = _training_lines()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        chosen = torch.randperm(len(lines))[:16].tolist()
        batch = tokenizer([lines[i] for i in chosen], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def build_tiny_bert(
    out_dir: str | Path,
    *,
    num_labels: int = 2,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    seed: int = 0,
) -> Path:
    """A random BertForSequenceClassification (+ WordPiece tokenizer) saved in `out_dir`.

    The head is `classifier` [num_labels, hidden] with bias, on the pooled [CLS] vector.
    """
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_tiny_tokenizer("bert")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else "single_label_classification",
    )
    return _save_seeded(lambda: BertForSequenceClassification(config), seed, Path(out_dir),
                        tokenizer)


# Probe texts of very different lengths, so every batch of them holds real padding.
MIXED_LENGTH_TEXTS = [
    "the movie was a delight from start to finish and the cast was wonderful",
    "bad",
    "a dull and lifeless film",
    "it is one of the best films of the year , funny , moving and smart",
    "good great",
]
