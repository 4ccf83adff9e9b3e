"""Shared test setup: offline hub, predictable threads, tiny models built once per session.

    .venv/bin/python -m pytest tests -q            # fast tests
    .venv/bin/python -m pytest tests -q -m slow    # tests that load real pretrained models

Fixtures: tiny_llama_dir, tiny_bert_dir (session-built model folders), glue_dir
(../shared/data/glue).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub (it reads these once, at import): a hub lookup then
# fails at once instead of retrying for ~23 s, and tokenizers does not fork worker threads.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import torch  # noqa: E402  (after the environment above)

# Shared cores: with tiny models, more than one thread only adds contention (a tiny-Llama forward
# measured 5 ms on 1 thread and 166 ms on 2 on a busy machine), for torch and for BLAS alike.
torch.set_num_threads(1)
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:  # scikit-learn brings threadpoolctl; without it BLAS keeps its default
    pass

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
# The E2E NLG folder, where shipped generation specs (e2e-smollm2) find their data in tests.
E2E_DIR = GLUE_DIR.parent / "e2e"
if E2E_DIR.is_dir():
    os.environ.setdefault("PEFTLAB_E2E_DIR", str(E2E_DIR))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `gpu` need CUDA: without it they are skipped, saying so."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a 2-layer random LlamaForSequenceClassification (2 labels) + BPE tokenizer."""
    from peftlab.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a 2-layer random BertForSequenceClassification (2 labels) + WordPiece
    tokenizer."""
    from peftlab.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The shared GLUE folder (SST-2, MRPC, RTE as TSV files); skips when it is absent."""
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}")
    return GLUE_DIR
