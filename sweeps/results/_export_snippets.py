"""Runnable snippets of an export: a Python script (requests + google-auth) and a curl command.

They read credentials from the environment at run time and never embed one: an API key from
``$GEMINI_API_KEY`` (or the config's ``api_key_env``) sent as the ``x-goog-api-key`` header,
else Application Default Credentials. ``GEMINI_API_BASE_URL`` / ``VERTEX_BASE_URL`` point
them at another server speaking the same API (a proxy, or a fake on 127.0.0.1 in tests).
"""

from __future__ import annotations

import json
import pprint
import shlex
from dataclasses import dataclass
from typing import Any

GEMINI_API_URL = "https://generativelanguage.googleapis.com"
_TUNING_SCOPES = ("https://www.googleapis.com/auth/generative-language.tuning",
                  "https://www.googleapis.com/auth/cloud-platform")


@dataclass(frozen=True, slots=True)
class Header:
    """Where the config came from, and the notes that go with it (as comments)."""

    study: str
    trial: int
    notes: tuple[str, ...]

    def comment(self, prefix: str) -> str:
        lines = [f"Best configuration of sweep {self.study!r} (trial {self.trial}), "
                 "exported by gemini-sweep."]
        lines += [f"  - {note}" for note in self.notes]
        return "\n".join(f"{prefix}{line}".rstrip() for line in lines)


@dataclass(frozen=True, slots=True)
class GeminiApiTarget:
    base_url: str
    model_id: str
    key_envs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VertexTarget:
    project: str
    location: str
    api_version: str
    files: tuple[str, ...]  # gs:// URIs the body names; upload them first

    @property
    def host(self) -> str:
        if self.location == "global":
            return "https://aiplatform.googleapis.com"
        if self.location in ("us", "eu"):
            return f"https://aiplatform.{self.location}.rep.googleapis.com"
        return f"https://{self.location}-aiplatform.googleapis.com"

    @property
    def path(self) -> str:
        return (f"{self.api_version}/projects/{self.project}/locations/{self.location}"
                "/tuningJobs")


_GEMINI_PY = '''\
"""{doc}

Run: python this_file.py   (needs: pip install requests google-auth)
Auth: an API key in ${key_env} (sent as the x-goog-api-key header), else Application
Default Credentials with the tuning scope. GEMINI_API_BASE_URL sends it elsewhere.
"""

import os
import sys
import time

import requests

BASE_URL = os.environ.get("GEMINI_API_BASE_URL", {base_url!r}).rstrip("/")
TUNED_MODEL_ID = {model_id!r}
KEY_ENVS = {key_envs!r}
SCOPES = {scopes!r}
TIMEOUT_S = 60
POLL_S = float(os.environ.get("GEMINI_SWEEP_POLL_S", "30"))
DEADLINE_S = float(os.environ.get("GEMINI_SWEEP_DEADLINE_S", str(6 * 3600)))

BODY = {body}


def session() -> requests.Session:
    for name in KEY_ENVS:
        key = os.environ.get(name)
        if key:
            authed = requests.Session()
            authed.headers["x-goog-api-key"] = key
            return authed
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, project = google.auth.default(scopes=SCOPES)
    authed = AuthorizedSession(credentials)
    quota_project = getattr(credentials, "quota_project_id", None) or project
    if quota_project:
        authed.headers["x-goog-user-project"] = quota_project
    return authed


def main() -> int:
    http = session()
    reply = http.post(f"{{BASE_URL}}/v1beta/tunedModels", json=BODY, timeout=TIMEOUT_S,
                      params={{"tunedModelId": TUNED_MODEL_ID}})
    if reply.status_code == 409:
        print(f"tunedModels/{{TUNED_MODEL_ID}} already exists; following it")
    elif not reply.ok:
        print(f"create failed: HTTP {{reply.status_code}}: {{reply.text}}", file=sys.stderr)
        return 1
    name = f"tunedModels/{{TUNED_MODEL_ID}}"
    deadline = time.monotonic() + DEADLINE_S
    while True:
        model = http.get(f"{{BASE_URL}}/v1beta/{{name}}", timeout=TIMEOUT_S)
        model.raise_for_status()
        state = model.json().get("state")
        print(f"{{name}}: {{state}}", flush=True)
        if state != "CREATING":
            return 0 if state == "ACTIVE" else 1
        if time.monotonic() > deadline:
            print(f"{{name}} is still CREATING; check it later", file=sys.stderr)
            return 2
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
'''

_VERTEX_PY = '''\
"""{doc}

Run: python this_file.py   (needs: pip install requests google-auth)
First upload the training data the body names:
{uploads}
Auth: Application Default Credentials (gcloud auth application-default login).
VERTEX_BASE_URL sends it elsewhere.
"""

import os
import sys
import time

import google.auth
from google.auth.transport.requests import AuthorizedSession

BASE_URL = os.environ.get("VERTEX_BASE_URL", {host!r}).rstrip("/")
JOBS_PATH = {path!r}
TIMEOUT_S = 60
POLL_S = float(os.environ.get("GEMINI_SWEEP_POLL_S", "60"))
DEADLINE_S = float(os.environ.get("GEMINI_SWEEP_DEADLINE_S", str(12 * 3600)))
TERMINAL = {{"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
            "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"}}

BODY = {body}


def main() -> int:
    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    http = AuthorizedSession(credentials)
    reply = http.post(f"{{BASE_URL}}/{{JOBS_PATH}}", json=BODY, timeout=TIMEOUT_S)
    if not reply.ok:
        print(f"create failed: HTTP {{reply.status_code}}: {{reply.text}}", file=sys.stderr)
        return 1
    name = reply.json()["name"]
    version = JOBS_PATH.split("/", 1)[0]
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = http.get(f"{{BASE_URL}}/{{version}}/{{name}}", timeout=TIMEOUT_S)
        job.raise_for_status()
        state = job.json().get("state")
        print(f"{{name}}: {{state}}", flush=True)
        if state in TERMINAL:
            return 0 if state == "JOB_STATE_SUCCEEDED" else 1
        if time.monotonic() > deadline:
            print(f"{{name}} is still running; check it later", file=sys.stderr)
            return 2
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
'''


def gemini_api_python(header: Header, target: GeminiApiTarget, body: dict[str, Any]) -> str:
    """A script that creates the tuned model (fixed ``tunedModelId``: safe to re-run) and
    polls it until it is ACTIVE or FAILED."""
    return _GEMINI_PY.format(
        doc=header.comment(""), key_env=target.key_envs[0], base_url=target.base_url,
        model_id=target.model_id, key_envs=target.key_envs, scopes=list(_TUNING_SCOPES),
        body=_literal(body))


def vertex_python(header: Header, target: VertexTarget, body: dict[str, Any]) -> str:
    """A script that creates the tuning job and polls it to a terminal state."""
    return _VERTEX_PY.format(
        doc=header.comment(""), uploads=_uploads(target, prefix="  "), host=target.host,
        path=target.path, body=_literal(body))


def gemini_api_curl(header: Header, target: GeminiApiTarget, body: dict[str, Any]) -> str:
    """A shell command posting the create body; the key comes from the environment."""
    url = f"{target.base_url.rstrip('/')}/v1beta/tunedModels?tunedModelId={target.model_id}"
    key = target.key_envs[0]
    return (f"{header.comment('# ')}\n"
            f": \"${{{key}:?export {key}=your-api-key first}}\"\n"
            f"curl -sS -X POST {shlex.quote(url)} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f"  -H \"x-goog-api-key: ${key}\" \\\n"
            f"  --data-binary @- <<'GEMINI_SWEEP_BODY'\n{_compact(body)}\nGEMINI_SWEEP_BODY\n")


def vertex_curl(header: Header, target: VertexTarget, body: dict[str, Any]) -> str:
    """Upload commands for the data, then a curl posting the ``tuningJobs`` body."""
    url = f"{target.host}/{target.path}"
    return (f"{header.comment('# ')}\n"
            "# First upload the training data the body names:\n"
            f"{_uploads(target, prefix='#   ')}\n"
            f"curl -sS -X POST {shlex.quote(url)} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            "  -H \"Authorization: Bearer $(gcloud auth print-access-token)\" \\\n"
            f"  --data-binary @- <<'GEMINI_SWEEP_BODY'\n{_compact(body)}\nGEMINI_SWEEP_BODY\n")


def _uploads(target: VertexTarget, *, prefix: str) -> str:
    names = ("train.jsonl", "validation.jsonl")
    return "\n".join(f"{prefix}gcloud storage cp {name} {uri}"
                     for name, uri in zip(names, target.files, strict=False))


def _literal(body: dict[str, Any]) -> str:
    # A Python literal (not JSON): dicts, lists, strings and numbers print as valid Python.
    return pprint.pformat(body, width=99, sort_dicts=False)


def _compact(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
