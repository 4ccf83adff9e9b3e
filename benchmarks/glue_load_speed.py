"""python -m benchmarks.glue_load_speed [--data-dir ../shared/data/glue] [--repeats 5]

How long the GLUE folder reader (`peftlab.tasks.load_glue_dir`) takes on the largest file the
quickstart reads, SST-2 train (67,349 rows): the median and the fastest of `--repeats` loads,
in seconds, and rows per second. tests/test_tasks.py checks the behaviour that keeps it fast
(one parse of the file, one normalisation per text); the time itself is measured here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from peftlab.tasks import get_task, load_glue_dir

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    task = get_task("sst2")
    seconds, rows = [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rows = len(load_glue_dir(task, args.data_dir, "train"))
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    print(f"SST-2 train: {rows} rows; median {median:.3f} s, fastest {min(seconds):.3f} s "
          f"over {args.repeats} loads ({rows / median:,.0f} rows/s)")


if __name__ == "__main__":
    main()
