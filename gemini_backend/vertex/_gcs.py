"""Create-once uploads to Cloud Storage with the JSON API (reference/tuning_api.md 2.10).

Objects are named after the SHA-256 of their bytes and written with ``ifGenerationMatch=0``
("succeed only if there is no live version"), so an upload is idempotent: a retry, a second
trial or a restarted sweep that sends the same dataset gets 412 Precondition Failed, which
means the identical object is already there. Small files go in one ``uploadType=media``
request; large ones use a resumable session in 256 KiB-aligned chunks, after a metadata
``GET`` so an existing gigabyte is not sent again just to learn it exists.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from urllib.parse import quote

from gemini_backend.errors import BackendError
from gemini_backend.errors import JobNotFound
from gemini_backend.errors import TransientError
from gemini_backend.transport.http import RestClient

logger = logging.getLogger(__name__)

DEFAULT_STORAGE_URL = "https://storage.googleapis.com"
#: Above this size a resumable upload is used (a dropped connection costs one chunk).
RESUMABLE_THRESHOLD_BYTES = 8 * 1024 * 1024
#: Non-final chunks of a resumable upload must be multiples of 256 KiB.
CHUNK_ALIGNMENT_BYTES = 256 * 1024
DEFAULT_CHUNK_BYTES = 32 * CHUNK_ALIGNMENT_BYTES
MAX_STALLED_CHUNKS = 5
_EXISTS = 412
_INCOMPLETE = 308


def object_name(data: bytes, *, prefix: str, suffix: str = ".jsonl") -> str:
    """The content-addressed name: the same bytes always get the same object."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix.strip('/')}/{digest}{suffix}" if prefix.strip("/") else digest + suffix


class GcsUploader:
    """Uploads bytes once per content into one bucket. Thread-safe.

    Args:
        client: a REST client on the storage host (``https://storage.googleapis.com``).
        bucket: the bucket name (no ``gs://``).
        resumable_threshold_bytes: files larger than this use a resumable session.
        chunk_bytes: the resumable chunk size, a multiple of 256 KiB.
    """

    def __init__(self, client: RestClient, bucket: str, *,
                 resumable_threshold_bytes: int = RESUMABLE_THRESHOLD_BYTES,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if chunk_bytes <= 0 or chunk_bytes % CHUNK_ALIGNMENT_BYTES:
            raise ValueError("chunk_bytes must be a positive multiple of 256 KiB")
        self._client = client
        self._bucket = bucket
        self._threshold = resumable_threshold_bytes
        self._chunk = chunk_bytes
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def upload_once(self, data: bytes, *, prefix: str) -> str:
        """Store ``data`` under its content name unless it is there; return its ``gs://`` URI.

        Raises:
            AuthError: no permission on the bucket (``storage.objects.create``).
            BackendError: the upload failed after retries.
        """
        name = object_name(data, prefix=prefix)
        uri = f"gs://{self._bucket}/{name}"
        with self._lock:
            if name in self._done:
                return uri
        if len(data) > self._threshold:
            created = not self._exists(name) and self._resumable(name, data)
        else:
            created = self._media(name, data)
        logger.info("dataset %s %s (%d bytes)", uri, "uploaded" if created else
                    "already in the bucket", len(data))
        with self._lock:
            self._done.add(name)
        return uri

    def missing_permissions(self, permissions: list[str]) -> list[str]:
        """Which of ``permissions`` the caller lacks on the bucket.

        ``buckets.testIamPermissions`` answers with the subset held; it needs no permission
        of its own, so an account holding only object roles can ask (``buckets.get`` would
        need ``storage.buckets.get``, which the object roles do not grant).

        Raises:
            JobNotFound: no such bucket.
        """
        reply = self._client.request(
            "GET", f"storage/v1/b/{self._bucket}/iam/testPermissions",
            what=f"test permissions on bucket {self._bucket}",
            params={"permissions": list(permissions)})
        held = set(reply.get("permissions") or [])
        return [permission for permission in permissions if permission not in held]

    def create_object(self, name: str, data: bytes) -> bool:
        """Write ``name`` unless it exists (``ifGenerationMatch=0``); False if it did."""
        return self._media(name, data)

    def read_object(self, name: str) -> bytes | None:
        """The object's bytes, or ``None`` when there is no such object."""
        try:
            response = self._client.send(
                "GET", f"storage/v1/b/{self._bucket}/o/{quote(name, safe='')}",
                what=f"read {name}", params={"alt": "media"})
        except JobNotFound:
            return None
        return response.content

    def object_names(self, prefix: str) -> list[str]:
        """Names of the objects under ``prefix`` (``objects.list``, every page)."""
        names: list[str] = []
        query: dict[str, str] = {"prefix": prefix, "fields": "items(name),nextPageToken"}
        while True:
            page = self._client.request("GET", f"storage/v1/b/{self._bucket}/o",
                                        what=f"list {prefix}", params=query)
            names += [str(item.get("name")) for item in page.get("items") or []]
            token = page.get("nextPageToken")
            if not token:
                return names
            query["pageToken"] = str(token)

    def _media(self, name: str, data: bytes) -> bool:
        response = self._client.send(
            "POST", f"upload/storage/v1/b/{self._bucket}/o", what=f"upload {name}",
            params={"uploadType": "media", "name": name, "ifGenerationMatch": "0"},
            data=data, headers={"Content-Type": "application/jsonl"},
            accept_statuses=frozenset({_EXISTS}),
        )
        return response.status_code != _EXISTS

    def _exists(self, name: str) -> bool:
        try:
            self._client.request("GET", f"storage/v1/b/{self._bucket}/o/{quote(name, safe='')}",
                                 what=f"look up {name}")
        except JobNotFound:
            return False
        return True

    def _resumable(self, name: str, data: bytes) -> bool:
        start = self._client.send(
            "POST", f"upload/storage/v1/b/{self._bucket}/o", what=f"start upload of {name}",
            params={"uploadType": "resumable", "name": name, "ifGenerationMatch": "0"},
            json_body={"name": name, "contentType": "application/jsonl"},
            headers={"X-Upload-Content-Type": "application/jsonl",
                     "X-Upload-Content-Length": str(len(data))},
            accept_statuses=frozenset({_EXISTS}),
        )
        if start.status_code == _EXISTS:
            return False
        session_uri = start.headers.get("Location")
        if not session_uri:
            raise BackendError(f"start upload of {name}: the answer had no session Location")
        offset, stalls = 0, 0
        while offset < len(data):
            previous, offset = offset, self._put_chunk(session_uri, name, data, offset)
            if offset < 0:
                return False
            stalls = stalls + 1 if offset <= previous else 0
            if stalls > MAX_STALLED_CHUNKS:
                raise TransientError(f"upload {name}: no progress after {stalls} tries at "
                                     f"byte {offset}; try again later")
        return True

    def _put_chunk(self, session_uri: str, name: str, data: bytes, offset: int) -> int:
        """Send one chunk; the next offset, ``len(data)`` when done, -1 if it already existed.

        A failed chunk is not resent blindly: the session is asked what it committed
        (``Content-Range: bytes */total``) and the upload resumes from there.
        """
        end = min(offset + self._chunk, len(data))
        try:
            response = self._client.send(
                "PUT", session_uri, what=f"upload {name}", data=data[offset:end],
                headers={"Content-Range": f"bytes {offset}-{end - 1}/{len(data)}"},
                retry=False, accept_statuses=frozenset({_EXISTS}),
            )
        except TransientError as error:
            logger.warning("upload %s: %s; asking the session what it kept", name,
                           error.message)
            response = self._client.send(
                "PUT", session_uri, what=f"resume upload of {name}", data=b"",
                headers={"Content-Range": f"bytes */{len(data)}"},
                accept_statuses=frozenset({_EXISTS}),
            )
        if response.status_code == _EXISTS:
            return -1
        if response.status_code == _INCOMPLETE:
            committed = response.headers.get("Range", "")  # "bytes=0-262143"
            return int(committed.rpartition("-")[2]) + 1 if committed else 0
        return len(data)
