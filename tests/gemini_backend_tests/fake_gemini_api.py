"""A fake Gemini API (``tunedModels`` v1beta) on 127.0.0.1, for tests and end-to-end runs.

Real HTTP (``ThreadingHTTPServer`` in a background thread) with the reference's shapes
(``/work/shared/reference/tuning_api.md`` section 1): models.list, tunedModels create / get /
list / delete, operations get / list / cancel, ``:generateContent``. Jobs go CREATING ->
ACTIVE as time passes (``epoch_s`` seconds per epoch), with snapshots growing step by step.
It checks the ``x-goog-api-key`` header (or a bearer token), records every request, and can
inject 429 bursts with ``RetryInfo``, 503s and a 403 insufficient-scopes error.

Use in tests::

    with FakeGeminiApi(api_key="k") as fake:
        fake.url  # http://127.0.0.1:<port>

Or as a process (the runner's end-to-end test)::

    python -m tests.gemini_backend_tests.fake_gemini_api --port 0 --port-file p --state-file s

Admin endpoints (no auth): ``GET /_admin/requests`` (``?method=POST&path=...``),
``POST /_admin/faults`` (body: ``{"status": 429, "count": 3, "retry_delay_s": 1}``),
``POST /_admin/fail_next`` (``{"count": 1, "message": "..."}``), ``POST /_admin/reset``,
``POST /_admin/chaos`` (``{"rate": 0.3, "seed": 1}``: random faults, see ``_fake_chaos``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from tests.gemini_backend_tests._fake_chaos import BEFORE
from tests.gemini_backend_tests._fake_chaos import Chaos
from tests.gemini_backend_tests._fake_chaos import answer_after
from tests.gemini_backend_tests._fake_gemini_state import FakeState
from tests.gemini_backend_tests._fake_gemini_state import Fault
from tests.gemini_backend_tests._fake_gemini_state import ServiceError

_MODEL = re.compile(r"^/(v1|v1beta)/tunedModels/([a-z0-9-]+)$")
_GENERATE = re.compile(r"^/v1beta/tunedModels/([a-z0-9-]+):generateContent$")
_OPERATIONS = re.compile(r"^/v1beta/tunedModels/([a-z0-9-]+)/operations$")
_OPERATION = re.compile(r"^/(v1|v1beta)/tunedModels/([a-z0-9-]+)/operations/([a-z0-9]+)$")
_CANCEL = re.compile(r"^/(v1|v1beta)/tunedModels/([a-z0-9-]+)/operations/([a-z0-9]+):cancel$")


class FakeGeminiApi:
    """The fake service; a context manager that serves on a free port of 127.0.0.1.

    Args:
        api_key: the key ``x-goog-api-key`` must carry (``None``: keys are not checked).
        tokens: bearer tokens accepted instead of a key.
        tunable_models: base models listed with ``createTunedModel`` (empty: none, the real
            service's state since May 2025).
        epoch_s: seconds of (real or injected-clock) time one epoch takes.
        clock: the time source; tests pass a manual clock to step jobs deterministically.
        state_file: where the state and the request log are kept across restarts.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        tokens: tuple[str, ...] = (),
        tunable_models: tuple[str, ...] = ("models/gemini-1.5-flash-001-tuning",),
        other_models: tuple[str, ...] = ("models/gemini-2.5-flash", "models/embedding-001"),
        epoch_s: float = 0.1,
        queue_s: float = 0.0,
        port: int = 0,
        clock: Any = time.monotonic,
        state_file: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.tokens = set(tokens)
        self.state = FakeState(tunable_models=tunable_models, other_models=other_models,
                               epoch_s=epoch_s, queue_s=queue_s, clock=clock,
                               state_file=state_file)
        self.chaos = Chaos()  # random faults; off until a test sets a rate
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> FakeGeminiApi:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGeminiApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Test helpers, the same as the admin endpoints.
    def requests(self, *, method: str | None = None, path: str | None = None) -> list[dict]:
        return self.state.requests(method=method, path=path)

    def inject(self, status: int, *, count: int = 1, retry_delay_s: float | None = None,
               method: str | None = None, path_contains: str | None = None,
               scopes: bool = False, after: bool = False,
               field: str | None = None) -> None:
        """Answer the next ``count`` matching calls with ``status`` (``after``: do the call
        first, then answer the error, as when a response is lost)."""
        self.state.add_fault(Fault(status=status, count=count, retry_delay_s=retry_delay_s,
                                   method=method, path_contains=path_contains,
                                   scopes=scopes, after=after, field=field))

    def fail_next(self, count: int = 1, message: str = "Tuning failed: internal error") -> None:
        self.state.fail_next(count, message)

    def creates(self) -> list[dict]:
        """Every create call received, in order (the exactly-once check reads these)."""
        return self.requests(method="POST", path="/v1beta/tunedModels")


def _handler_for(fake: FakeGeminiApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # quiet: the request log is the record

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")  # a form post (the token endpoint)
            chaos = None
            try:
                if parts.path.startswith("/_admin/"):
                    self._reply(200, _admin(fake, method, parts.path, query, body))
                    return
                headers = {name.lower(): value for name, value in self.headers.items()}
                fake.state.record(method, parts.path, query, headers, body)
                if parts.path != "/token":  # the OAuth token endpoint takes no credentials
                    self._authenticate(query)
                chaos = fake.chaos.pick(parts.path)
                if chaos in BEFORE:
                    raise Fault(int(chaos), retry_delay_s=fake.chaos.retry_delay_s).error()
                fake.state.raise_fault(method, parts.path)
                result = _route(fake.state, method, parts.path, query, body)
                fake.state.raise_fault(method, parts.path, after=True)
                code, extra = 200, None
            except ServiceError as error:
                code, result, extra = error.code, error.body(), error.headers
            # An after-the-call fault spoils error answers too (a retried create's 409, a
            # lookup's 404), as on Vertex: a fault that is counted is one the client sees.
            if answer_after(self, chaos, slow_s=fake.chaos.slow_s):
                return
            self._reply(code, result, headers=extra)

        def _authenticate(self, query: dict[str, str]) -> None:
            bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if bearer and bearer in fake.tokens:
                return
            key = self.headers.get("x-goog-api-key") or query.get("key")
            if fake.api_key is None and (key or bearer):
                return
            if not key and not bearer:
                raise ServiceError(401, "UNAUTHENTICATED", "Method doesn't allow unregistered "
                                   "callers. Please use an API key or other credentials.")
            if key != fake.api_key:
                raise ServiceError(400, "INVALID_ARGUMENT", "API key not valid. Please pass a "
                                   "valid API key.", reason="API_KEY_INVALID")

        def _reply(self, code: int, payload: Any, *, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _route(state: FakeState, method: str, path: str, query: dict[str, str],
           body: Any) -> Any:
    if method == "GET" and path == "/v1beta/models":
        return state.page("models", state.list_models(), query)
    if method == "POST" and path == "/v1beta/tunedModels":
        return state.create(query.get("tunedModelId"), body)
    if method == "GET" and path == "/v1beta/tunedModels":
        return state.page("tunedModels", state.list_tuned(), query)
    if method == "POST" and path == "/token":
        return {"access_token": "sa-token-from-fake", "expires_in": 3600,
                "token_type": "Bearer"}
    for pattern, verb, action in (
        (_GENERATE, "POST", lambda m: state.generate(m[1], body)),
        (_OPERATIONS, "GET", lambda m: state.page("operations", state.operations(m[1]), query)),
        (_CANCEL, "POST", lambda m: state.cancel(m[2], m[3], version=m[1])),
        (_OPERATION, "GET", lambda m: state.operation(m[2], m[3])),
        (_MODEL, "GET", lambda m: state.get(m[2])),
        (_MODEL, "DELETE", lambda m: state.delete(m[2])),
    ):
        match = pattern.match(path)
        if match and method == verb:
            return action(match)
    raise ServiceError(404, "NOT_FOUND", f"The requested URL {path} was not found.")


def _admin(fake: FakeGeminiApi, method: str, path: str, query: dict[str, str],
           body: Any) -> Any:
    body = body or {}
    if path == "/_admin/requests":
        return {"requests": fake.requests(method=query.get("method"), path=query.get("path"))}
    if path == "/_admin/faults" and method == "POST":
        fake.inject(int(body["status"]), count=int(body.get("count", 1)),
                    retry_delay_s=body.get("retry_delay_s"), method=body.get("method"),
                    path_contains=body.get("path_contains"), scopes=bool(body.get("scopes")),
                    after=bool(body.get("after")))
        return {}
    if path == "/_admin/fail_next" and method == "POST":
        fake.fail_next(int(body.get("count", 1)), str(body.get("message", "Tuning failed")))
        return {}
    if path == "/_admin/chaos":
        if method == "POST":
            fake.chaos = Chaos(**{**body, "kinds": tuple(body.get("kinds", Chaos.kinds))})
        return {"injected": dict(fake.chaos.injected)}
    if path == "/_admin/reset" and method == "POST":
        fake.state.reset()
        return {}
    raise ServiceError(404, "NOT_FOUND", f"no admin endpoint {method} {path}")


@dataclass
class _Args:
    port: int = 0
    port_file: Path | None = None
    state_file: Path | None = None
    api_key: str | None = None
    epoch_s: float = 0.5
    tunable: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; print the URL and write the port to ``--port-file``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--api-key", default=os.environ.get("FAKE_GEMINI_API_KEY", "test-key"))
    parser.add_argument("--epoch-s", type=float, default=0.5)
    parser.add_argument("--tunable", action="append",
                        help="a tunable base model (repeatable); default the 1.5 Flash one")
    args = parser.parse_args(argv, namespace=_Args())
    tunable = tuple(args.tunable or ("models/gemini-1.5-flash-001-tuning",))
    fake = FakeGeminiApi(api_key=args.api_key, tunable_models=tunable, epoch_s=args.epoch_s,
                         port=args.port, state_file=args.state_file,
                         clock=time.time)  # wall time: the state outlives this process
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(fake.port))
        tmp.replace(args.port_file)
    print(f"fake Gemini API listening on {fake.url}", flush=True)  # noqa: T201 - a CLI
    try:
        fake._server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main()
