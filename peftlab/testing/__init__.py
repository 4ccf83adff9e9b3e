"""Helpers for the test suite and the benchmarks; the library itself never imports them.

- `tiny_models`: tiny Llama and BERT models and their tokenizers, built from configs with no
  network (`build_tiny_llama`, `build_tiny_bert`, `build_tiny_tokenizer`), and probe texts of
  mixed lengths;
- `fixtures`: a spec for a seconds-long study of a tiny model (`tiny_spec`, `write_spec`) and
  that study run through its stages (`tiny_study`);
- `watch`: polling a study that runs in a subprocess (`wait_for_records`, `running_steps`);
- `clock`: simulated time for the serving loop and the load generator (`VirtualClock`);
- `sample_study`: a fixed study directory with results in the shapes the stages write, without
  training (`python -m peftlab.testing.sample_study DIR`; not re-exported here, so that running
  it as a module does not import it twice).

    from peftlab.testing import build_tiny_llama, tiny_spec, write_spec
    from peftlab.testing.sample_study import write_sample
"""

from peftlab.testing.clock import VirtualClock
from peftlab.testing.fixtures import METHOD_PRESETS, tiny_spec, tiny_study, write_spec
from peftlab.testing.tiny_models import (
    MIXED_LENGTH_TEXTS,
    build_tiny_bert,
    build_tiny_llama,
    build_tiny_tokenizer,
)
from peftlab.testing.watch import running_steps, wait_for_records

__all__ = [
    "METHOD_PRESETS",
    "MIXED_LENGTH_TEXTS",
    "VirtualClock",
    "build_tiny_bert",
    "build_tiny_llama",
    "build_tiny_tokenizer",
    "running_steps",
    "tiny_spec",
    "tiny_study",
    "wait_for_records",
    "write_spec",
]
