"""The fork server: imports torch, transformers and peft once, then forks one child per bench unit.

    python -m peftlab.bench.server        (started by `peftlab.bench.runner`, not by hand)

Protocol (one JSON object per line): the parent writes {"job": JOB_PATH, "result": RESULT_PATH} on
stdin; the server forks, answers {"started": CHILD_PID} at once and {"pid": CHILD_PID,
"exit_code": N} when the child is gone (N < 0: killed by signal -N). The answers go to the
server's original stdout; the server's fd 1 is pointed at stderr first, so whatever the libraries
print in a child cannot corrupt the protocol. The server's stderr is a pipe that the parent reads
into the study's log.txt, and each child sends its own output to that log file under its unit's
label (`worker.child_main`, `peftlab.logs.capture_child`). End of stdin ends the server.

Each child starts from the server's pristine state (libraries imported, no model, no CUDA context:
the server never touches the GPU), runs `worker.child_main` and exits; nothing it allocates,
compiles or caches survives it. This is multiprocessing's forkserver idea without its re-import
of the parent's `__main__` module (which breaks scripts without an `if __name__ == "__main__"`).
"""

from __future__ import annotations

import json
import os
import sys


def serve() -> None:
    # A CUDA driver initialised here would be unusable in the forked children. torch never
    # initialises it on import; this makes a library's torch.cuda.is_available() at import time
    # ask NVML instead of the driver, so that cannot either.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    import peftlab.bench.worker as worker  # the preload: every child starts with it imported

    if torch.cuda.is_initialized():
        print("peftlab bench server: CUDA was initialised while importing; CUDA units will fail "
              "in forked children; use bench.isolation: subprocess", file=sys.stderr)

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints in children go to stderr, never into the protocol
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                proto.close()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                job = json.loads(open(req["job"], encoding="utf-8").read())  # noqa: SIM115
                worker.child_main(job, req["result"])
                code = 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # no atexit handlers, no parent state torn down twice
        proto.write(json.dumps({"started": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        proto.write(json.dumps({"pid": pid, "exit_code": os.waitstatus_to_exitcode(status)})
                    + "\n")


if __name__ == "__main__":
    serve()
