"""A stand-in for an engine server, for tests of starting, driving and stopping one (stdlib
only; `fake_engine.FakeEngine` runs it).

    python fake_engine_server.py --port P [--child-pidfile F] [--fail] [--never-healthy]

Serves GET /health and a streaming POST /v1/completions in the OpenAI format vLLM uses: for a
request of max_tokens n it streams n events, token ids 100, 101, ..., text "t0 t1 ...", then a
usage event and [DONE]. --child-pidfile: first starts a child process (a sleeping Python) and
writes its pid, so a test can check that stopping the server stops its children too, as vLLM's
engine core processes must be. --fail: print a message and exit 3 before listening.
--never-healthy: listen, but answer /health with 503.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--child-pidfile")
    ap.add_argument("--fail", action="store_true")
    ap.add_argument("--never-healthy", action="store_true")
    args = ap.parse_args()
    if args.fail:
        print("fake engine: cannot load the model folder /nowhere", flush=True)
        return 3
    if args.child_pidfile:
        child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
        with open(args.child_pidfile, "w") as fh:
            fh.write(f"{child.pid}\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            code = 503 if args.never_healthy else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            n = int(req["max_tokens"])
            for i in range(n):
                ev = {"model": req["model"], "choices": [
                    {"index": 0, "text": f"t{i} ", "token_ids": [100 + i]}]}
                self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
                self.wfile.flush()
            usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
            self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
