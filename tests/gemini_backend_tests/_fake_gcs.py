"""The Cloud Storage half of :mod:`tests.gemini_backend_tests.fake_vertex` (JSON API uploads).

``uploadType=media`` and resumable sessions (308 with ``Range`` until the last chunk; non-final
chunks must be multiples of 256 KiB), ``ifGenerationMatch=0`` answering 412 when the object
exists, object GETs (metadata, or the bytes with ``alt=media``), object lists, bucket GETs and
``testIamPermissions``. Each call needs the IAM permission the JSON API reference names for
it, and the caller holds only ``storage_permissions`` (``testIamPermissions`` needs none).
"""

from __future__ import annotations

import re
from typing import Any

from tests.gemini_backend_tests._fake_vertex_jobs import FakeError
from tests.gemini_backend_tests._fake_vertex_jobs import Reply

RESUMABLE_ALIGN = 256 * 1024


class FakeGcs:
    """Mixed into ``FakeVertex``: the bucket contents and upload sessions."""

    url: str
    buckets: set[str]
    storage_permissions: set[str]
    objects: dict[tuple[str, str], bytes]
    _uploads: dict[str, dict[str, Any]]

    def _upload(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
                body: bytes) -> Reply:
        bucket = path.split("/")[5]
        if bucket not in self.buckets:
            raise FakeError(404, f"The specified bucket does not exist: {bucket}")
        upload_type = query.get("uploadType", [""])[0]
        if method == "PUT" and "upload_id" in query:
            return self._resumable_chunk(query["upload_id"][0], headers, body)
        name = query.get("name", [""])[0]
        if not name:
            raise FakeError(400, "Required parameter: name")
        self._check_generation(bucket, name, query)
        if upload_type == "media":
            return Reply(200, self._store(bucket, name, body))
        if upload_type == "resumable":
            upload_id = f"up{len(self._uploads) + 1}"
            self._uploads[upload_id] = {"bucket": bucket, "name": name, "data": b"",
                                        "query": query}
            location = f"{self.url}{path}?uploadType=resumable&upload_id={upload_id}"
            return Reply(200, {}, {"Location": location})
        raise FakeError(400, f"unsupported uploadType {upload_type!r}")

    def _resumable_chunk(self, upload_id: str, headers: Any, body: bytes) -> Reply:
        session = self._uploads.get(upload_id)
        if session is None:
            raise FakeError(404, "No such upload session")
        match = re.match(r"bytes (\*|(\d+)-(\d+))/(\d+)", headers.get("Content-Range", ""))
        if not match:
            raise FakeError(400, "Content-Range is required")
        total, data = int(match.group(4)), session["data"]
        if match.group(1) != "*":
            start, end = int(match.group(2)), int(match.group(3))
            is_last = end + 1 == total
            if start != len(data) or end - start + 1 != len(body):
                raise FakeError(400, "Content-Range does not match the committed bytes")
            if not is_last and len(body) % RESUMABLE_ALIGN:
                raise FakeError(400, "non-final chunks must be multiples of 256 KiB")
            session["data"] = data = data + body
        if len(data) < total:
            committed = {"Range": f"bytes=0-{len(data) - 1}"} if data else {}
            return Reply(308, None, committed)
        self._check_generation(session["bucket"], session["name"], session["query"])
        return Reply(200, self._store(session["bucket"], session["name"], data))

    def _check_generation(self, bucket: str, name: str, query: dict[str, list[str]]) -> None:
        if query.get("ifGenerationMatch") == ["0"] and (bucket, name) in self.objects:
            raise FakeError(412, "At least one of the pre-conditions you specified did not "
                            "hold.", status="FAILED_PRECONDITION")

    def _store(self, bucket: str, name: str, data: bytes) -> dict[str, Any]:
        self.objects[(bucket, name)] = data
        return self._object(bucket, name)

    def _object(self, bucket: str, name: str) -> dict[str, Any]:
        return {"kind": "storage#object", "bucket": bucket, "name": name,
                "generation": "1", "size": str(len(self.objects[(bucket, name)]))}

    def _require(self, permission: str) -> None:
        if permission not in self.storage_permissions:
            raise FakeError(403, f"tuner@test-project.iam.gserviceaccount.com does not have "
                            f"{permission} access to the Google Cloud Storage bucket. "
                            "Permission '" + permission + "' denied on resource (or it may "
                            "not exist).")

    def _storage_call(self, path: str, query: dict[str, list[str]]) -> Reply:
        parts = path.split("/", 6)  # ['', 'storage', 'v1', 'b', bucket, 'o' | 'iam', rest]
        bucket = parts[4]
        if bucket not in self.buckets:
            raise FakeError(404, f"The specified bucket does not exist: {bucket}")
        if len(parts) == 7 and parts[5] == "iam" and parts[6] == "testPermissions":
            asked = query.get("permissions", [])
            return Reply(200, {"kind": "storage#testIamPermissionsResponse",
                               "permissions": [p for p in asked
                                               if p in self.storage_permissions]})
        if len(parts) < 6:
            self._require("storage.buckets.get")
            return Reply(200, {"kind": "storage#bucket", "name": bucket})
        if len(parts) == 6 and parts[5] == "o":
            self._require("storage.objects.list")
            return self._list_objects(bucket, query)
        self._require("storage.objects.get")
        if (bucket, parts[6]) not in self.objects:
            raise FakeError(404, f"No such object: {bucket}/{parts[6]}")
        if query.get("alt") == ["media"]:
            return Reply(200, self.objects[(bucket, parts[6])])
        return Reply(200, self._object(bucket, parts[6]))

    def _list_objects(self, bucket: str, query: dict[str, list[str]]) -> Reply:
        prefix = query.get("prefix", [""])[0]
        names = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))
        start = int(query.get("pageToken", ["0"])[0])
        page: dict[str, Any] = {"kind": "storage#objects",
                                "items": [{"name": n} for n in names[start:start + 2]]}
        if start + 2 < len(names):
            page["nextPageToken"] = str(start + 2)
        return Reply(200, page)

    def _read_gs(self, uri: str) -> bytes | None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return self.objects.get((bucket, name))
