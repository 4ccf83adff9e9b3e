"""Deployment benchmark: what serving each fine-tuned model costs, measured correctly.

    peftlab bench quickstart                                    # the study's `bench` stage
                                                                (peftlab/stages/bench.py)
    peftlab bench --model M --adapter A [--adapter B] ...       # one-off, see `bench_oneoff`

Modes (`peftlab/bench/modes/`, one file each): base, full, unmerged, merged, multi, mixed, each
optionally "+compile". Every unit (a mode on its artifacts) runs in its own process
(`runner.py` -> `worker.py`): cold and repeated load, a correctness gate (`gate.py`), then every
sweep point timed (`timing.py`) on real evaluation examples (`requests.py`), with memory, storage
and the analytical FLOPs of the adapter path (`flops.py`). Results: one `bench` record per
(mode, unit, batch size, sequence length), see `units.py`. The study's primary latency
comparisons are measured paired, several models in one process per block (`paired.py`,
`paired_job.py`, analysed by `peftlab.latency_design`).
"""

from peftlab.bench.oneoff import bench_oneoff

__all__ = ["bench_oneoff"]
