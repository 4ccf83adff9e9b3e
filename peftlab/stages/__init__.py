"""The pipeline's stages, one module each, siblings over shared ground.

Each module exposes `run(ctx)`; the order is `peftlab.pipeline.STAGES`. A stage reads the study
directory (`ctx.store`), the study's data (`ctx.data`) and models through `peftlab.artifacts`, and
writes its own results table. No stage imports another: they talk through the store only.
"""
