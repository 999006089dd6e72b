"""The `s3` backend: objects in an S3-compatible bucket through boto3.

Credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION
when set, else from boto3's own chain (its environment variables, files, an instance role).
Uploads are streamed in parts (8 MiB, four at a time), so a file of any size costs the same memory,
and an object appears only when its upload completes: a reader never sees half of it.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storefront.storage.base import (
    NotInStorage,
    StorageError,
    StoredObject,
    check_key,
    temporary_file,
)

log = logging.getLogger("smi.storage")

PART_SIZE = 8 * 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4
)
MISSING = {"404", "NoSuchKey", "NotFound"}
REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class S3Target:
    """Which bucket, under which prefix, at which endpoint, with which credentials."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None


def describe_error(exc: Exception, bucket: str) -> str:
    """What went wrong, in words an owner can act on; never a credential."""
    if isinstance(exc, S3UploadFailedError):  # boto3's transfer wraps the request's own error
        cause = exc.__cause__ or exc.__context__
        exc = cause if isinstance(cause, ClientError | BotoCoreError) else exc
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code == "NoSuchBucket" or (code == "404" and "HeadBucket" in str(exc)):
            return f"bucket {bucket} does not exist"
        if code in REFUSED:
            return f"credentials refused for bucket {bucket} ({code})"
        return f"{code or 'error'} from storage"
    return f"storage unreachable ({type(exc).__name__})"


class S3Storage:
    """Objects under `prefix` in one bucket."""

    name = "s3"

    def __init__(self, target: S3Target, work_dir: Path, *, attempts: int = 3) -> None:
        self.target = target
        self.work_dir = work_dir
        self.bucket = target.bucket
        self.prefix = target.prefix.strip("/") + "/" if target.prefix.strip("/") else ""
        self.client = self._client(attempts, connect_timeout=5, read_timeout=60)
        # Readiness probes ask once and briefly: an unreachable store must not hold /readyz.
        self.probe = self._client(1, connect_timeout=2, read_timeout=5)

    def _client(self, attempts: int, *, connect_timeout: int, read_timeout: int) -> Any:
        target = self.target
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if target.endpoint_url else "auto"},
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        session = boto3.session.Session(
            aws_access_key_id=target.access_key,
            aws_secret_access_key=target.secret_key,
            region_name=target.region,
        )
        return session.client("s3", endpoint_url=target.endpoint_url, config=config)

    def object_name(self, key: str) -> str:
        """The object's name in the bucket: the prefix, then the key."""
        return self.prefix + check_key(key)

    def _key(self, name: str) -> str:
        return name[len(self.prefix) :]

    def _fail(self, exc: Exception, action: str) -> StorageError:
        message = describe_error(exc, self.bucket)
        log.warning("storage %s failed: %s", action, message)
        return StorageError(message)

    def _read_error(self, exc: Exception, key: str, action: str) -> StorageError:
        if isinstance(exc, ClientError) and _code(exc) in MISSING:
            return NotInStorage(f"{key} is not in storage")
        return self._fail(exc, action)

    def stat(self, key: str) -> StoredObject | None:
        """The object's size and time from a HEAD request, or None when there is none."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _code(exc) in MISSING:
                return None
            raise self._fail(exc, "stat") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "stat") from exc
        return StoredObject(key, int(head["ContentLength"]), head["LastModified"])

    def put_file(self, key: str, source: Path, content_type: str) -> StoredObject:
        """Upload `source` in parts (the object appears when the last part is in), remove it."""
        name = self.object_name(key)
        try:
            self.client.upload_file(
                str(source),
                self.bucket,
                name,
                ExtraArgs={"ContentType": content_type} if content_type else None,
                Config=TRANSFER,
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._fail(exc, "upload") from exc
        size = source.stat().st_size
        source.unlink(missing_ok=True)
        return StoredObject(key, size, dt.datetime.now(dt.UTC))

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """Download the object into WORK_DIR; the copy is removed when the block ends."""
        copy = temporary_file(self.work_dir, Path(key).suffix)
        try:
            try:
                self.client.download_file(
                    self.bucket, self.object_name(key), str(copy), Config=TRANSFER
                )
            except (BotoCoreError, ClientError) as exc:
                raise self._read_error(exc, key, "download") from exc
            yield copy
        finally:
            copy.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        """The object's body, streamed."""
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._read_error(exc, key, "read") from exc
        body: BinaryIO = found["Body"]
        return body

    def delete(self, key: str) -> int:
        """Delete the object; the bytes it held (0 when there was none)."""
        found = self.stat(key)
        if found is None:
            return 0
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "delete") from exc
        return found.size

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix`, in key order, a page of 1,000 at a time."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(
                        self._key(item["Key"]), int(item["Size"]), item["LastModified"]
                    )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "list") from exc

    def download_url(
        self, key: str, seconds: int, *, filename: str | None = None, content_type: str = ""
    ) -> str | None:
        """A presigned GET URL (signed locally: no request), with the name and type to answer."""
        params = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if filename:
            quoted = urllib.parse.quote(filename)
            params["ResponseContentDisposition"] = (
                f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quoted}"
            )
        if content_type:
            params["ResponseContentType"] = content_type
        url: str = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=seconds
        )
        return url

    def local_path(self, key: str) -> Path | None:
        """None: objects are not on this machine's disk."""
        return None

    def check(self) -> None:
        """The bucket exists and the credentials may use it (one quick HEAD request)."""
        try:
            self.probe.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "check") from exc

    def remove_abandoned_uploads(
        self, older_than: dt.datetime, dry_run: bool
    ) -> list[StoredObject]:
        """Abort multipart uploads started before `older_than`: their parts cost money."""
        found = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] >= older_than:
                        continue
                    size = self._parts_size(upload["Key"], upload["UploadId"])
                    found.append(StoredObject(self._key(upload["Key"]), size, upload["Initiated"]))
                    if not dry_run:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "multipart cleanup") from exc
        return found

    def _parts_size(self, name: str, upload_id: str) -> int:
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=name, UploadId=upload_id
        )
        return sum(int(part["Size"]) for page in pages for part in page.get("Parts", []))
