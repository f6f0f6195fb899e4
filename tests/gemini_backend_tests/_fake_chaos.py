"""Random faults for the fake services: a seeded share of calls goes wrong, in five ways.

``429`` and ``503`` answer an error before the call is applied (``RetryInfo`` of
``retry_delay_s``). ``slow``, ``drop`` and ``malformed`` apply the call first and then
answer too late (past the client's timeout), not at all (the connection is closed), or with
a truncated JSON body: the ambiguous failures where a create may have happened although the
client saw an error. Used by ``FakeGeminiApi.chaos`` and ``FakeVertex.chaos``
(``POST /_admin/chaos`` with the same fields) and by the reliability tests.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler

KINDS = ("429", "503", "slow", "drop", "malformed")
BEFORE = frozenset({"429", "503"})


@dataclass
class Chaos:
    """Which share of calls fails and how; ``injected`` counts what was done."""

    rate: float = 0.0
    kinds: tuple[str, ...] = KINDS
    slow_s: float = 1.0
    retry_delay_s: float = 0.1
    seed: int = 0
    round_robin: bool = False  # faults take the kinds in turn (every kind soon happens)
    injected: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown chaos kinds {sorted(unknown)}; use {KINDS}")
        self._rng = random.Random(self.seed)

    def pick(self, path: str) -> str | None:
        """The fault for this call, or None; admin and token calls are never touched."""
        if self.rate <= 0 or path.startswith("/_admin/") or path == "/token":
            return None
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            n_done = sum(self.injected.values())
            kind = (self.kinds[n_done % len(self.kinds)] if self.round_robin
                    else self._rng.choice(self.kinds))
            self.injected[kind] += 1
            return kind


def answer_after(handler: BaseHTTPRequestHandler, kind: str | None, *, slow_s: float) -> bool:
    """Do an after-the-call fault on ``handler``; True when the answer was taken over."""
    if kind == "slow":
        time.sleep(slow_s)  # then answer normally: the client has given up by now
        return False
    if kind == "drop":
        handler.close_connection = True  # no status line at all: the peer sees a reset
        return True
    if kind == "malformed":
        payload = b'{"name": "tunedModels/trunc'
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        return True
    return False


__all__ = ["BEFORE", "KINDS", "Chaos", "answer_after"]
