"""Streaming requests to an OpenAI-compatible completions endpoint, timed per token.

    t = complete(url, model="sst2", prompt="Review: ...", max_tokens=32, arrival_ns=now)
    t.first_ns, t.token_ns, t.done_ns, t.output_tokens, t.token_ids, t.text

One request is one POST to /v1/completions with `"stream": true`: the server sends one
server-sent event per step that produced text (`data: {json}`), then `data: [DONE]`. Each
event's arrival is stamped with `time.perf_counter_ns` (the clock the open-loop driver schedules
on), so time to first token and inter-token gaps are measured where a user would see them, with
the HTTP and detokenisation cost included. Greedy decoding (temperature 0); `ignore_eos` (a vLLM
extension) makes the output length the one asked for, so load runs offer fixed work per request.
`return_token_ids` (vLLM) returns the generated token ids, for checks against transformers.

Standard library only (http.client), one connection per request, so any number of requests can be
in flight from threads, and `Timing.close()` aborts one from another thread (the driver's stop).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """One request's times (perf_counter ns) and result.

    status: done | error | unserved (stopped before it finished). token_ns: the arrival of each
    streamed event that carried output (an event may carry more than one token: output_tokens
    is the server's count from the final usage event, when sent, else the number of ids or
    events). arrival_ns: when the request was due (the open loop's schedule); send_ns: when it
    was sent.
    """

    id: int
    model: str
    arrival_ns: int
    send_ns: int | None = None
    first_ns: int | None = None
    done_ns: int | None = None
    token_ns: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    output_tokens: int = 0
    prompt_tokens: int | None = None
    status: str = "pending"
    error: str | None = None
    _conn: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Abort the request from another thread (its status becomes "unserved")."""
        with self._lock:
            if self.status == "pending":
                self.status = "unserved"
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def complete(url: str, *, model: str, prompt: str | list[int], max_tokens: int,
             arrival_ns: int, request_id: int = 0, ignore_eos: bool = True,
             timeout_s: float = 600.0, timing: Timing | None = None) -> Timing:
    """Send one streaming greedy completion request and time it (see the module docstring)."""
    t = timing or Timing(request_id, model, arrival_ns)
    parts = urllib.parse.urlsplit(url)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": int(max_tokens),
                       "temperature": 0.0, "stream": True, "ignore_eos": ignore_eos,
                       "return_token_ids": True,
                       "stream_options": {"include_usage": True}}).encode()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    with t._lock:
        if t.status != "pending":
            return t
        t._conn = conn
    usage = None
    try:
        t.send_ns = time.perf_counter_ns()
        conn.request("POST", "/v1/completions", body,
                     {"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read(2000).decode(errors='replace')}")
        events = 0
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter_ns()
            event = json.loads(data)
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                ids = choice.get("token_ids") or []
                text = choice.get("text") or ""
                if not ids and not text:
                    continue
                if t.first_ns is None:
                    t.first_ns = now
                t.token_ns.append(now)
                t.token_ids.extend(int(i) for i in ids)
                t.text += text
                events += 1
        t.done_ns = time.perf_counter_ns()
        if usage:
            t.output_tokens = int(usage.get("completion_tokens") or 0)
            t.prompt_tokens = usage.get("prompt_tokens")
        else:
            t.output_tokens = len(t.token_ids) or events
        with t._lock:
            if t.status == "pending":
                t.status = "done" if t.first_ns is not None else "error"
                if t.status == "error":
                    t.error = "the stream ended without output"
    except (OSError, http.client.HTTPException, ValueError, RuntimeError) as err:
        with t._lock:
            if t.status == "pending":
                t.status = "error"
                t.error = f"{type(err).__name__}: {err}"
    finally:
        conn.close()
    return t
