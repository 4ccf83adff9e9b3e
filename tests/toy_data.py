"""A learnable toy sentiment task written as CSV files, shared by the training and search tests:
the last word of each text decides its label, so a tiny model learns it in a few steps.

    files = toy_files(tmp_path / "data")      # {"train": .../train.csv, "eval": .../eval.csv}
    spec_task = toy_task(files)               # a `tasks:` entry of a spec (columns, labels)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS_POS = ["good", "great", "fine", "nice", "happy", "best"]
WORDS_NEG = ["bad", "poor", "awful", "sad", "worst", "dull"]


def toy_files(root: Path, *, n_train: int = 64, n_eval: int = 32,
              text: str = "the movie was {word}", flip_eval: bool = False) -> dict[str, Path]:
    """Write `root`/train.csv and `root`/eval.csv (columns text, label), return split -> path.

    Rows alternate label 0 (neg) and 1 (pos); each text is `text` formatted with `split`, the
    row index `i` and a word of its label drawn from a generator seeded 0 (the same files every
    call). flip_eval: the eval labels are inverted, a task the training data cannot teach.
    """
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        lines = ["text,label"]
        for i in range(n):
            label = i % 2
            word = rng.choice(WORDS_POS if label else WORDS_NEG)
            shown = 1 - label if (flip_eval and split == "eval") else label
            lines.append(f"{text.format(split=split, i=i, word=word)},{shown}")
        path = root / f"{split}.csv"
        path.write_text("\n".join(lines) + "\n")
        out[split] = path
    return out


def toy_task(files: dict[str, Path]) -> dict:
    """The spec's task entry for `files` (as `toy_files` returns them)."""
    return {"name": "toy", "files": {k: str(v) for k, v in files.items()},
            "columns": {"text_a": "text", "label": "label"}, "label_names": ["neg", "pos"]}
