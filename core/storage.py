"""The S3 client, shared by the worker (lookup, upload) and the CLI (fetch).

boto3 against any S3-compatible endpoint: SeaweedFS, MinIO, Ceph RGW, AWS. A refusal of the
credentials (403, or a known credentials error code) surfaces as StorageAuthError (permanent: a
configuration error, never retried); every other failure of the server as StorageError
(transient: the task retries it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import ConfigError, ObjectMissing, StorageAuthError, StorageError
from core.settings import Settings

CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg; codecs=opus",
    "mp3": "audio/mpeg",
}
# Error codes that mean "these credentials will not do", whatever the HTTP status a server gives
# them (AWS answers some with 400). A HEAD response has no body, so there only the 403 tells.
AUTH_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
    }
)


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    metadata: dict[str, str]
    # The server's ETag without quotes: the MD5 hex of the bytes for an object written in one
    # PUT (`put` never uses multipart); a multipart ETag has a "-<parts>" suffix instead.
    etag: str = ""


class AudioStore:
    """One bucket of audio objects."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket
        # Conditional uploads until the server says it does not implement them.
        self._conditional = True

    @classmethod
    def from_settings(
        cls, settings: Settings, *, call_seconds: float | None = None, attempts: int = 2
    ) -> AudioStore:
        """A store on the configured bucket. `call_seconds` bounds connect and read (a probe
        that must answer fast, like `tts-batch doctor`); by default 5 and 30 s."""
        if not settings.s3_access_key or not settings.s3_secret_key:
            raise ConfigError(
                "S3 credentials missing: set TTS_S3_ACCESS_KEY and TTS_S3_SECRET_KEY "
                "(or *_FILE), or start the local stack with `tts-batch up`"
            )
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=call_seconds or 5,
                read_timeout=call_seconds or 30,
                # Retries belong to the task (backoff across deliveries), not to a hidden loop.
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )
        return cls(client, settings.s3_bucket)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def ensure_bucket(self, *, create: bool = True) -> None:
        """Check that the bucket answers to these credentials (a HEAD: a wrong key or secret is
        refused there); create it when it is missing and `create` is set."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            _raise_if_auth(exc, f"bucket {self.bucket}")
            if _status(exc) not in (404, 400) or not create:
                raise StorageError(f"cannot reach bucket {self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 endpoint unreachable: {exc}") from exc
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            _raise_if_auth(exc, f"creating bucket {self.bucket}")
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create bucket {self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 endpoint unreachable: {exc}") from exc

    def head(self, key: str) -> StoredObject | None:
        """The object's size and metadata, or None when it does not exist."""
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            _raise_if_auth(exc, f"lookup of {key}")
            raise StorageError(f"lookup of {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 endpoint unreachable: {exc}") from exc
        # Servers differ in the case of metadata keys: normalize to lower case.
        metadata = {k.lower(): v for k, v in response.get("Metadata", {}).items()}
        etag = str(response.get("ETag", "")).strip('"')
        return StoredObject(
            key=key, size=int(response["ContentLength"]), metadata=metadata, etag=etag
        )

    def put(self, key: str, data: bytes, *, fmt: str, metadata: dict[str, str]) -> bool:
        """Upload one object in a single PUT, unless the key already holds one: readers see all
        of it or none of it, and (where the server honours the condition) an object once
        written is never replaced.

        The PUT is conditional (`If-None-Match: *`): True when this call wrote the object,
        False when the server refused it (412) because another writer got there first. A
        server that answers the condition with 501 NotImplemented is sent plain PUTs from
        then on (the content key's lease still keeps writers of one key apart)."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": CONTENT_TYPES.get(fmt, "application/octet-stream"),
            "Metadata": metadata,
        }
        while True:
            try:
                if self._conditional:
                    self._client.put_object(**args, IfNoneMatch="*")
                else:
                    self._client.put_object(**args)
                return True
            except ClientError as exc:
                if self._conditional and _status(exc) == 412:
                    return False
                if self._conditional and _unsupported(exc):
                    self._conditional = False
                    continue
                _raise_if_auth(exc, f"upload of {key}")
                raise StorageError(f"upload of {key} failed: {exc}") from exc
            except BotoCoreError as exc:
                raise StorageError(f"upload of {key} failed: {exc}") from exc

    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectMissing when it does not exist."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            return bytes(response["Body"].read())
        except ClientError as exc:
            _raise_if_auth(exc, f"download of {key}")
            if _status(exc) == 404:
                raise ObjectMissing(key) from exc
            raise StorageError(f"download of {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"download of {key} failed: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            _raise_if_auth(exc, key)
            raise StorageError(f"cannot delete {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 endpoint unreachable: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def download(self, key: str, path: Path) -> None:
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.get(key))
        tmp.replace(path)

    def presigned_url(self, key: str, *, seconds: int) -> str:
        """A GET URL for the object that works without credentials for `seconds` (signed
        locally: no request is made, and a missing object answers 404 only when fetched)."""
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
            )
        except BotoCoreError as exc:
            raise StorageError(f"cannot sign a URL for {key}: {exc}") from exc
        return url

    def put_document(self, key: str, data: bytes, *, content_type: str) -> None:
        """Write (or replace) a small document that is not audio, e.g. a batch's manifest."""
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )
        except ClientError as exc:
            _raise_if_auth(exc, f"upload of {key}")
            raise StorageError(f"upload of {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"upload of {key} failed: {exc}") from exc


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unsupported(exc: ClientError) -> bool:
    """True when the server does not implement a conditional write (it says so with 501)."""
    return _status(exc) == 501 or _code(exc) == "NotImplemented"


def is_auth_error(exc: ClientError) -> bool:
    """True when the server refused the credentials rather than failed."""
    return _status(exc) == 403 or _code(exc) in AUTH_ERROR_CODES


def _raise_if_auth(exc: ClientError, what: str) -> None:
    if is_auth_error(exc):
        code = _code(exc) or str(_status(exc))
        raise StorageAuthError(
            f"S3 refused the credentials ({code}) for {what}: check TTS_S3_ACCESS_KEY, "
            "TTS_S3_SECRET_KEY and the key's permissions on the bucket"
        ) from exc
