"""A fake Vertex AI (tuningJobs, Experiments/TensorBoard, endpoints) + Cloud Storage on 127.0.0.1.

Written from the shapes in reference/tuning_api.md section 2: a real HTTP server
(``ThreadingHTTPServer`` in a thread, free port) that the backend reaches over real sockets.

* GCS JSON API: ``uploadType=media`` and resumable uploads (308 + ``Range``), with
  ``ifGenerationMatch=0`` answering 412 for an object that exists; object GET (metadata and
  ``alt=media``), object list and bucket ``testIamPermissions``. The caller holds only the
  object roles the docs name (``storage_roles``): ``buckets.get`` is refused (403), as is
  every call whose permission the roles lack.
* ``tuningJobs`` create / get / list (paginated; ``labels.<k>="<v>"`` filter) / ``:cancel``;
  jobs go QUEUED -> PENDING -> RUNNING -> SUCCEEDED as (simulated) time passes, with int64
  fields as strings, ``tuningDataStats``, ``tunedModel.checkpoints`` as the checkpoints page
  says (one per epoch up to 10 epochs, about ten spread plus the last beyond), a failing job
  (:meth:`FakeVertex.fail_next`), cancel (CANCELLING -> CANCELLED) and a pause
  (``FakeJob.pause``: PAUSED, then it resumes). ``list_lag_s``: the list shows a job only
  that long after its create (nothing documents it as immediate). A create is refused for
  an adapter size the base model does not take, or a dataset line with an empty text part.
* The loss curve behind ``job.experiment``, reachable only through documented links: the
  ExperimentRun context list, the run's ``{run id}-tb-run`` artifact whose
  ``metadata.resourceName`` is the TensorBoard run (ids unrelated to each other), then
  ``timeSeries`` and ``:read``, which returns a random sample of 1,000 points unless asked
  for more (at most 10,000) or for all (``maxDataPoints=-1``).
* ``endpoints/{id}:generateContent`` on a succeeded job's endpoint.
* Error injection (:meth:`FakeVertex.inject`, e.g. 429s, or a 503 after the job was created),
  and every request recorded (:attr:`FakeVertex.requests`; no token is ever recorded).

* :func:`service_account_key` makes a service-account key file that authenticates against
  the fake without any call to Google.

Standalone: ``python -m tests.gemini_backend_tests.fake_vertex --port N`` serves until killed;
``GET /_admin/requests`` and ``GET /_admin/jobs`` list what happened, ``POST /_admin/inject``,
``/_admin/fail_next`` and ``/_admin/advance`` script it (same arguments as the methods);
``POST /_admin/chaos`` (``{"rate": 0.3, "seed": 1}``) turns on random faults (``_fake_chaos``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from dataclasses import asdict
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import unquote
from urllib.parse import urlsplit

from tests.gemini_backend_tests._fake_chaos import BEFORE
from tests.gemini_backend_tests._fake_chaos import Chaos
from tests.gemini_backend_tests._fake_chaos import answer_after
from tests.gemini_backend_tests._fake_gcs import FakeGcs
from tests.gemini_backend_tests._fake_vertex_jobs import FakeError
from tests.gemini_backend_tests._fake_vertex_jobs import FakeJob
from tests.gemini_backend_tests._fake_vertex_jobs import Reply
from tests.gemini_backend_tests._fake_vertex_jobs import Timing
from tests.gemini_backend_tests._fake_vertex_jobs import validate_create

#: Permissions of the predefined Cloud Storage roles (IAM roles reference), as far as used.
STORAGE_ROLES = {
    "roles/storage.objectCreator": {"storage.objects.create"},
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/storage.objectAdmin": {"storage.objects.create", "storage.objects.get",
                                  "storage.objects.list", "storage.objects.delete"},
    "roles/storage.admin": {"storage.objects.create", "storage.objects.get",
                            "storage.objects.list", "storage.objects.delete",
                            "storage.buckets.get"},
}
DEFAULT_STORAGE_ROLES = ("roles/storage.objectCreator", "roles/storage.objectViewer")
#: timeSeries:read: "The maximum number of data points ... 1000 by default, up to 10000";
#: -1 returns all data.
DEFAULT_READ_POINTS, MAX_READ_POINTS = 1000, 10_000
_LABEL_FILTER = re.compile(r'^\s*labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"\s*$')
_PARENT_FILTER = re.compile(r'parent_contexts:"([^"]+)"')


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    has_auth: bool
    user_project: str | None
    status: int = 0


@dataclass
class Injection:
    status: int
    method: str | None = None
    path_contains: str = ""
    count: int = 1
    apply_first: bool = False
    retry_after_s: float | None = None


class FakeVertex(FakeGcs):
    """The fake services. Use as a context manager or ``start()`` / ``stop()``.

    Args:
        project, location: the only parent that exists.
        buckets: bucket names that exist.
        timing: how long each phase of a job lasts in simulated seconds.
        batch_size: the batch size the "service" picks (steps per epoch follow from it).
        page_size: the largest list page (small, so clients must paginate).
    """

    def __init__(self, *, project: str = "test-project", location: str = "us-central1",
                 buckets: tuple[str, ...] = ("test-bucket",), timing: Timing | None = None,
                 batch_size: int = 8, page_size: int = 2, list_lag_s: float = 0.0,
                 storage_roles: tuple[str, ...] = DEFAULT_STORAGE_ROLES,
                 port: int = 0) -> None:
        self.project, self.location = project, location
        self.parent = f"projects/{project}/locations/{location}"
        self.buckets = set(buckets)
        self.timing = timing or Timing()
        self.batch_size, self.page_size = batch_size, page_size
        self.requests: list[RecordedRequest] = []
        self.objects: dict[tuple[str, str], bytes] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.label_filter_supported = True
        self.list_lag_s = list_lag_s
        self.steps_per_epoch: int | None = None  # set: every job runs that many a epoch
        self.tb_links_missing = False  # set: no run has its -tb-run artifact
        self.storage_permissions = set().union(*(STORAGE_ROLES[r] for r in storage_roles))
        self._sample = random.Random(0)
        self._uploads: dict[str, dict[str, Any]] = {}
        self._injections: list[Injection] = []
        self._fail_plans: list[tuple[str, int]] = []
        self._offset_s = 0.0
        self._frozen_at: float | None = None
        self._lock = threading.RLock()
        self.chaos = Chaos()  # random faults; off until a test sets a rate
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle and scripting ---------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeVertex:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeVertex:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def now(self) -> float:
        with self._lock:
            if self._frozen_at is not None:
                return self._frozen_at
            return time.monotonic() + self._offset_s

    def freeze(self) -> None:
        """Stop simulated time; it moves only with :meth:`advance` from now on."""
        with self._lock:
            self._frozen_at = self.now()

    def advance(self, seconds: float) -> None:
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at += seconds
            else:
                self._offset_s += seconds

    def inject(self, status: int, *, method: str | None = None, path_contains: str = "",
               count: int = 1, apply_first: bool = False,
               retry_after_s: float | None = None) -> None:
        """Answer the next ``count`` matching requests with ``status``. ``apply_first`` runs
        the request (e.g. creates the job) before answering with the error."""
        with self._lock:
            self._injections.append(Injection(status, method, path_contains, count,
                                              apply_first, retry_after_s))

    def fail_next(self, message: str = "Internal error during tuning",
                  after_epochs: int = 1) -> None:
        """The next created job fails after ``after_epochs`` epochs of training."""
        with self._lock:
            self._fail_plans.append((message, after_epochs))

    def recorded(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests
                    if r.method == method and path_contains in r.path]

    def job_list(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.now()
            return [job.resource(now, self.timing) for job in self.jobs.values()]

    # --- request dispatch -----------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        split = urlsplit(raw_path)
        path, query = unquote(split.path), parse_qs(split.query)
        if path.startswith("/_admin/"):
            return self._admin(method, path, body)
        record = RecordedRequest(method, path, query, _decode(body),
                                 has_auth=str(headers.get("Authorization", "")).startswith(
                                     "Bearer "),
                                 user_project=headers.get("x-goog-user-project"))
        with self._lock:
            self.requests.append(record)
            injection = self._take_injection(method, path)
        try:
            if not record.has_auth:
                raise FakeError(401, "Request is missing required authentication credential.")
            if injection is not None and not injection.apply_first:
                raise FakeError(injection.status, "injected failure",
                                retry_after_s=injection.retry_after_s)
            with self._lock:
                reply = self._route(method, path, query, headers, body)
            if injection is not None:
                raise FakeError(injection.status, "injected failure after the call was applied",
                                retry_after_s=injection.retry_after_s)
        except FakeError as error:
            reply = Reply(error.code, error.body())
        record.status = reply.status
        return reply

    def _take_injection(self, method: str, path: str) -> Injection | None:
        for injection in self._injections:
            if injection.method in (None, method) and injection.path_contains in path:
                injection.count -= 1
                if injection.count <= 0:
                    self._injections.remove(injection)
                return injection
        return None

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
               body: bytes) -> Reply:
        if path.startswith("/upload/storage/v1/b/"):
            self._require("storage.objects.create")
            return self._upload(method, path, query, headers, body)
        if path.startswith("/storage/v1/b/"):
            return self._storage_call(path, query)
        if not path.startswith("/v1/"):
            raise FakeError(404, f"no such API path {path}")
        resource = path[len("/v1/"):]
        jobs_prefix = f"{self.parent}/tuningJobs"
        if resource == jobs_prefix:
            if method == "POST":
                return self._create(_decode(body))
            return self._list_jobs(query)
        if resource.startswith(jobs_prefix + "/"):
            job_id, _, verb = resource[len(jobs_prefix) + 1:].partition(":")
            return self._cancel(job_id) if verb == "cancel" else self._get_job(job_id)
        if resource.endswith(":generateContent"):
            return self._generate(resource.removesuffix(":generateContent"), _decode(body))
        if resource.endswith(":read"):
            return self._read_series(resource.removesuffix(":read"), query)
        if resource.endswith("/timeSeries"):
            return self._list_series(resource.removesuffix("/timeSeries"))
        if resource == f"{self.parent}/metadataStores/default/contexts":
            return self._list_runs(query)
        if "/metadataStores/default/contexts/" in resource:
            return self._get_context(resource)
        if "/metadataStores/default/artifacts/" in resource:
            return self._get_artifact(resource)
        raise FakeError(404, f"no such resource {resource}")

    # --- tuning jobs ---------------------------------------------------------------------------

    def _create(self, body: Any) -> Reply:
        train_uri, val_uri = validate_create(body, is_object=self._read_gs)
        job_id = str(1000 + len(self.jobs) + 1)
        fail = self._fail_plans.pop(0) if self._fail_plans else None
        job = FakeJob.create(
            job_id=job_id, parent=self.parent, body=body, created_at=self.now(),
            train=self._read_gs(train_uri) or b"",
            validation=self._read_gs(val_uri) if val_uri else None,
            batch_size=self.batch_size, fail=fail, steps_per_epoch=self.steps_per_epoch,
        )
        self.jobs[job_id] = job
        return Reply(200, job.resource(self.now(), self.timing))

    def _job(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise FakeError(404, f"TuningJob {self.parent}/tuningJobs/{job_id} not found")
        return job

    def _get_job(self, job_id: str) -> Reply:
        return Reply(200, self._job(job_id).resource(self.now(), self.timing))

    def _list_jobs(self, query: dict[str, list[str]]) -> Reply:
        now = self.now()
        jobs = [job.resource(now, self.timing) for job in self.jobs.values()
                if now - job.created_at >= self.list_lag_s]
        text = query.get("filter", [""])[0]
        if text:
            match = _LABEL_FILTER.match(text)
            if not match or not self.label_filter_supported:
                raise FakeError(400, f"Unsupported filter: {text}")
            jobs = [j for j in jobs if j.get("labels", {}).get(match[1]) == match[2]]
        size = min(int(query.get("pageSize", ["100"])[0]), self.page_size)
        start = int(query.get("pageToken", ["0"])[0])
        page: dict[str, Any] = {"tuningJobs": jobs[start:start + size]}
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return Reply(200, page)

    def _cancel(self, job_id: str) -> Reply:
        job = self._job(job_id)
        state = job.state_at(self.now(), self.timing)[0]
        if state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            raise FakeError(400, f"TuningJob {job.name} is in state {state} and cannot be "
                            "cancelled.", status="FAILED_PRECONDITION")
        if job.cancel_at is None:
            job.cancel_at = self.now()
        return Reply(200, {})

    def _generate(self, endpoint: str, body: Any) -> Reply:
        job = next((j for j in self.jobs.values() if j.endpoint == endpoint), None)
        if job is None or job.state_at(self.now(), self.timing)[0] != "JOB_STATE_SUCCEEDED":
            raise FakeError(404, f"Endpoint {endpoint} not found")
        prompt = body["contents"][-1]["parts"][0]["text"]
        text = f"[{job.job_id}] {prompt[::-1]}"
        return Reply(200, {"candidates": [{"content": {"role": "model",
                                                        "parts": [{"text": text}]}}]})

    # --- experiments and TensorBoard --------------------------------------------------------

    def _job_by_experiment(self, experiment: str) -> FakeJob:
        for job in self.jobs.values():
            if job.experiment == experiment and job.has_started(self.now(), self.timing):
                return job
        raise FakeError(404, f"Context {experiment} not found")

    def _get_context(self, resource: str) -> Reply:
        job = self._job_by_experiment(resource)
        return Reply(200, {"name": job.experiment, "schemaTitle": "system.Experiment",
                            "metadata": {"backing_tensorboard_resource": job.tensorboard}})

    def _list_runs(self, query: dict[str, list[str]]) -> Reply:
        match = _PARENT_FILTER.search(query.get("filter", [""])[0])
        if not match or 'schema_title="system.ExperimentRun"' not in match.string:
            raise FakeError(400, "Unsupported filter")
        job = self._job_by_experiment(match[1])
        return Reply(200, {"contexts": [{"name": job.run_context,
                                          "schemaTitle": "system.ExperimentRun"}]})

    def _get_artifact(self, resource: str) -> Reply:
        for job in self.jobs.values():
            if self.tb_links_missing:
                break
            if job.tb_run_artifact == resource and job.has_started(self.now(), self.timing):
                return Reply(200, {"name": resource,
                                    "schemaTitle": "google.VertexTensorboardRun",
                                    "metadata": {"resourceName": job.tensorboard_run}})
        raise FakeError(404, f"Artifact {resource} not found")

    def _series_job(self, run: str) -> FakeJob:
        for job in self.jobs.values():
            if run.startswith(job.tensorboard_run + "/") or run == job.tensorboard_run:
                return job
        raise FakeError(404, f"TensorboardRun {run} not found")

    def _list_series(self, run: str) -> Reply:
        job = self._series_job(run)
        series = job.series(self.now(), self.timing)
        return Reply(200, {"tensorboardTimeSeries": [
            {"name": f"{job.tensorboard_run}/timeSeries/{index}", "displayName": name,
             "valueType": "SCALAR"}
            for index, name in enumerate(series) if series[name]]})

    def _read_series(self, name: str, query: dict[str, list[str]]) -> Reply:
        job = self._series_job(name)
        series = list(job.series(self.now(), self.timing).items())
        index = int(name.rsplit("/", 1)[-1])
        display, points = series[index]
        try:
            wanted = int(query.get("maxDataPoints", [str(DEFAULT_READ_POINTS)])[0])
        except ValueError:
            raise FakeError(400, "maxDataPoints must be an integer") from None
        if wanted == 0 or wanted < -1:
            raise FakeError(400, "maxDataPoints must be positive, or -1 for all data")
        limit = len(points) if wanted == -1 else min(wanted, MAX_READ_POINTS)
        if len(points) > limit:  # "randomly selected from this time series"
            points = sorted(self._sample.sample(points, limit))
        return Reply(200, {"timeSeriesData": {
            "tensorboardTimeSeriesId": str(index), "valueType": "SCALAR",
            "values": [{"step": str(step), "wallTime": _rfc3339(time.time()),
                        "scalar": {"value": value}} for step, value in points]}})

    def epoch_losses(self) -> dict[str, dict[str, list[float]]]:
        """Per job: the mean training loss of each epoch and its eval loss, as written."""
        with self._lock:
            now = self.now()
            truth = {}
            for job in self.jobs.values():
                series = job.series(now, self.timing)
                by_epoch: dict[int, list[float]] = {}
                for step, loss in series["/train_total_loss"]:
                    by_epoch.setdefault(job.epoch_of(step), []).append(loss)
                truth[job.name] = {
                    "train": [sum(v) / len(v) for _, v in sorted(by_epoch.items())],
                    "eval": [loss for _, loss in series["/eval_total_loss"]],
                    "checkpoints": job.checkpoint_epochs}
            return truth

    # --- admin ---------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        args = _decode(body) or {}
        if path == "/_admin/requests":
            with self._lock:
                return Reply(200, {"requests": [asdict(r) for r in self.requests]})
        if path == "/_admin/jobs":
            return Reply(200, {"tuningJobs": self.job_list()})
        if path == "/_admin/epoch_losses":
            return Reply(200, self.epoch_losses())
        if path == "/_admin/chaos":
            if method == "POST":
                self.chaos = Chaos(**{**args, "kinds": tuple(args.get("kinds", Chaos.kinds))})
            return Reply(200, {"injected": dict(self.chaos.injected)})
        actions = {"/_admin/inject": self.inject, "/_admin/fail_next": self.fail_next,
                   "/_admin/advance": self.advance}
        if method == "POST" and path in actions:
            actions[path](**args)
            return Reply(200, {})
        return Reply(404, FakeError(404, f"no admin path {path}").body())


def service_account_key(fake_url: str, *, project: str = "test-project") -> dict[str, str]:
    """A service-account JSON key (a fresh RSA key) that works offline against the fake.

    Its ``universe_domain`` is not ``googleapis.com``, so google-auth signs its own JWT as the
    bearer token instead of calling ``token_uri``, and skips its "regional access boundary"
    lookup, which for a default-universe key calls ``iamcredentials.googleapis.com``.
    ``token_uri`` points at the fake so nothing could leave the machine anyway.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": project, "private_key_id": "fake-key-1",
            "private_key": pem, "client_email": f"tuner@{project}.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"{fake_url}/token",
            "universe_domain": "fake-universe.test"}


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return {"bytes": len(body)}


def _rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _handler_for(fake: FakeVertex) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One buffered write per answer and no Nagle delay: headers and body in separate
        # segments would wait on the client's delayed ACK (~40 ms a request).
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            chaos = fake.chaos.pick(urlsplit(self.path).path)
            if chaos in BEFORE:
                error = FakeError(int(chaos), "injected by chaos",
                                  retry_after_s=fake.chaos.retry_delay_s)
                reply = Reply(error.code, error.body())
            else:
                reply = fake.handle(self.command, self.path, self.headers, body)
                if answer_after(self, chaos, slow_s=fake.chaos.slow_s):
                    return
            is_raw = isinstance(reply.body, bytes)  # an object's bytes (alt=media)
            payload = (reply.body if is_raw else b"" if reply.body is None
                       else json.dumps(reply.body).encode())
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if reply.body is not None:
                self.send_header("Content-Type", "application/octet-stream" if is_raw
                                 else "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output quiet; requests are recorded instead

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", default="test-project")
    parser.add_argument("--location", default="us-central1")
    parser.add_argument("--bucket", default="test-bucket")
    parser.add_argument("--queued-s", type=float, default=Timing.queued_s)
    parser.add_argument("--step-s", type=float, default=Timing.step_s)
    parser.add_argument("--list-lag-s", type=float, default=0.0)
    parser.add_argument("--storage-role", action="append", choices=sorted(STORAGE_ROLES),
                        help="a role the caller holds on the bucket (repeat); default: "
                             + " + ".join(DEFAULT_STORAGE_ROLES))
    args = parser.parse_args(argv)
    fake = FakeVertex(project=args.project, location=args.location, buckets=(args.bucket,),
                      timing=Timing(queued_s=args.queued_s, step_s=args.step_s),
                      list_lag_s=args.list_lag_s,
                      storage_roles=tuple(args.storage_role or DEFAULT_STORAGE_ROLES),
                      port=args.port)
    print(f"fake Vertex AI listening on {fake.url}", flush=True)
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main()

__all__ = ["FakeError", "FakeVertex", "RecordedRequest", "Timing", "service_account_key"]
