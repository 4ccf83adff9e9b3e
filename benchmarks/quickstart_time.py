"""Wall time of the quickstart study, stage by stage and in total.

    python benchmarks/quickstart_time.py --data-dir ../shared/data/glue [--output-dir DIR]
                                         [--spec quickstart] [--keep]

Runs every stage of the pipeline (`peftlab.pipeline.STAGES`, in order) on the quickstart study
through `peftlab.pipeline.run_stages(study, [stage])`, one stage at a time, in a fresh study
directory (a temporary one unless --output-dir is given), and prints the seconds each stage took
and the total. The target of issue 6: the whole study finishes on a 2-core CPU in about 10
minutes. Data comes from --data-dir, else PEFTLAB_DATA_DIR, else the Hugging Face hub.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="quickstart",
                        help="study spec: a file or a shipped spec's name (default: quickstart)")
    parser.add_argument("--data-dir", default=os.environ.get("PEFTLAB_DATA_DIR"),
                        help="local GLUE folder (default: $PEFTLAB_DATA_DIR, else the hub)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="study directory; must not exist yet (default: a temporary one)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary study directory (to read its report)")
    args = parser.parse_args()

    from rich.console import Console

    from peftlab.pipeline import STAGES, load_study, run_stages

    if args.output_dir is not None and args.output_dir.exists():
        parser.error(f"--output-dir {args.output_dir} exists: finished stages would be skipped "
                     "and their time not measured")
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="peftlab-quickstart-")) / "study"
    study = load_study(args.spec, data_dir=args.data_dir, output_dir=str(out))
    console = Console(stderr=True, quiet=True)
    times: list[tuple[str, float]] = []
    try:
        for stage in STAGES:
            t0 = time.perf_counter()
            run_stages(study, [stage], console=console)
            times.append((stage, time.perf_counter() - t0))
            print(f"{stage:<10} {times[-1][1]:9.1f} s", flush=True)
    finally:
        if args.output_dir is None and not args.keep:
            shutil.rmtree(out.parent, ignore_errors=True)
    total = sum(t for _, t in times)
    print(f"{'total':<10} {total:9.1f} s  ({len(study.runs())} training runs, "
          f"data from {args.data_dir or 'the hub'}, {os.cpu_count()} CPUs)")
    if args.output_dir is not None or args.keep:
        print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
