"""S3-compatible backend: one object per artifact at s3://bucket/prefix/sha256/<digest>.

Every upload carries the SHA-256 of its bytes (`ChecksumSHA256`), so the server refuses bytes
corrupted or truncated in transit. Files larger than one part go up as a multipart upload,
which stays invisible until it is completed and is aborted on any failure. Reads re-hash the
bytes, as every backend does. boto3 is imported here only, when an s3:// store is opened.
"""

import base64
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError, PartialCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from moeforge.errors import ArtifactNotFound, ConfigError, MoeforgeError, StoreError
from moeforge.store.protocol import (
    DEFAULT_MAX_OBJECT_BYTES,
    Progress,
    check_content,
    check_digest,
    check_size,
    is_digest,
    open_source,
    sha256_hex,
    sha256_stream,
    source_size,
)

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024**2  # S3's smallest part, except the last
DEFAULT_PART_BYTES = 64 * 1024**2
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_BAD_CREDENTIALS = {  # the key is unknown, expired, or may not do this
    "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
_CORRUPT_UPLOAD = {  # the server's hash of what arrived differs from the checksum sent, or bytes are missing
    "BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch", "IncompleteBody",
}


class S3Store:
    """Objects in one S3 (or MinIO, Ceph, R2 …) bucket under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,  # http(s)://host:port of an S3-compatible server; None → AWS
        region: str | None = None,
        credentials: tuple[str, str] | None = None,  # (access key, secret key); None → boto3's own chain
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        part_bytes: int = DEFAULT_PART_BYTES,  # files larger than this go up in parts of this size
        max_attempts: int = 3,  # per request, with botocore's standard backoff
    ):
        if part_bytes < MIN_PART_BYTES:
            raise ConfigError(f"part_bytes={part_bytes:,} is below S3's minimum part size of {MIN_PART_BYTES:,} bytes.")
        self.bucket, self.prefix, self.endpoint, self.region = bucket, prefix.strip("/"), endpoint, region
        self.url = _url(bucket, self.prefix, endpoint, region)
        self.max_object_bytes, self.part_bytes = max_object_bytes, part_bytes
        self._base = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
        self._client = _client(endpoint, region, credentials, max_attempts)
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def put(self, data: bytes, *, progress: Progress | None = None) -> str:
        check_size(len(data), self.max_object_bytes, self.url, "the object")
        digest = sha256_hex(data)
        if not self.exists(digest):
            self._put_object(digest, data)
        if progress is not None:
            progress(len(data), len(data))  # one request: nothing to report before it is done
        return digest

    def put_file(self, path: str | PathLike[str]) -> str:
        path = Path(path)
        check_size(source_size(path), self.max_object_bytes, self.url, f"file {path}")
        with open_source(path) as src:
            digest, n_bytes = sha256_stream(src)
        check_size(n_bytes, self.max_object_bytes, self.url, f"file {path}")  # it may have grown since stat
        if self.exists(digest):
            return digest
        if n_bytes <= self.part_bytes:
            with open_source(path) as src:
                data = src.read()
            self._put_object(digest, _same_as_hashed(data, digest, path))
        else:
            self._put_multipart(digest, path)
        return digest

    def get(self, digest: str) -> bytes:
        key = self._key(check_digest(digest))
        with self._mapped("read", digest):
            data = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return check_content(digest, data, self.url)

    def exists(self, digest: str) -> bool:
        try:
            self._head(digest)
        except ArtifactNotFound:
            return False
        return True

    def size(self, digest: str) -> int:
        return int(self._head(digest)["ContentLength"])

    def digests(self) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._base)
        with self._mapped("list"):
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self._base) :]
                    if is_digest(name):  # S3 lists keys in UTF-8 byte order: lexicographic for hex
                        yield name

    def _key(self, digest: str) -> str:
        return self._base + digest

    def _head(self, digest: str) -> dict:
        key = self._key(check_digest(digest))
        with self._mapped("look up", digest):
            try:
                return self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    self._check_bucket()  # a HEAD answers 404 for a missing bucket too
                raise

    def _check_bucket(self) -> None:
        if not self._bucket_checked:
            with self._mapped("open bucket"):
                self._client.head_bucket(Bucket=self.bucket)
            self._bucket_checked = True

    def _put_object(self, digest: str, data: bytes) -> None:
        with self._mapped("upload", digest):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(digest),
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode("ascii"),  # else the server refuses
            )
        log.debug("stored %s (%d bytes) in %s", digest, len(data), self.url)

    def _put_multipart(self, digest: str, path: Path) -> None:
        """Upload in parts; complete only if the parts hash to digest, else abort (nothing becomes visible)."""
        key = self._key(digest)
        with self._mapped("upload", digest):
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256")[
                "UploadId"
            ]
        try:
            parts = self._upload_parts(key, upload_id, path, digest)
            with self._mapped("upload", digest):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            self._abort(key, upload_id)
            raise
        log.debug("stored %s from %s in %d parts in %s", digest, path, len(parts), self.url)

    def _upload_parts(self, key: str, upload_id: str, path: Path, digest: str) -> list[dict]:
        hasher, parts = hashlib.sha256(), []
        with open_source(path) as src:
            while chunk := src.read(self.part_bytes):
                hasher.update(chunk)
                number, checksum = len(parts) + 1, _b64(chunk)
                with self._mapped("upload", digest):
                    etag = self._client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                    )["ETag"]
                parts.append({"ETag": etag, "PartNumber": number, "ChecksumSHA256": checksum})
        _same_digest(hasher.hexdigest(), digest, path)
        return parts

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:  # the upload's own error is the one to raise
            log.warning(
                "could not abort multipart upload %s of %s in %s (%s); it is not visible as an object, "
                "but holds storage until a bucket lifecycle rule removes incomplete uploads",
                upload_id, key, self.url, exc,
            )

    @contextmanager
    def _mapped(self, action: str, digest: str | None = None) -> Iterator[None]:
        """botocore errors → ArtifactNotFound / StoreError that name the store and what to do."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, action, digest) from exc

    def _error(self, exc: Exception, action: str, digest: str | None) -> MoeforgeError:
        where = f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3'}"
        what = f"{action} object {digest}" if digest else action
        if isinstance(exc, ClientError):
            code, message = _code(exc), exc.response.get("Error", {}).get("Message", "")
            if code == "NoSuchBucket" or (code in _NOT_FOUND and not digest):
                return StoreError(
                    f"{where} does not exist (store {self.url}). Create the bucket, or fix its name in the store URL."
                )
            if code in _NOT_FOUND:
                return ArtifactNotFound(
                    f"object {digest} is not in store {self.url}. "
                    "Check the digest and the --store URL; `moeforge store ls` lists what the store holds."
                )
            if code in _BAD_CREDENTIALS:
                return StoreError(f"{where} refused the credentials to {what} ({code}: {message}). {_CREDENTIALS_HINT}")
            if code in _WRONG_REGION:
                return StoreError(
                    f"{where} is in another region than the store URL {self.url} says ({code}: {message}). "
                    "Add or fix region= in the store URL."
                )
            if code in _CORRUPT_UPLOAD:
                return StoreError(
                    f"{where} rejected the upload of object {digest}: the bytes it received do not match their "
                    f"SHA-256 ({code}: {message}). They were corrupted or truncated in transit; "
                    "nothing was stored, retry."
                )
            return StoreError(f"cannot {what} in store {self.url}: {code or 'error'}: {message or exc}.")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"no S3 credentials to {what} in store {self.url} ({exc}). {_CREDENTIALS_HINT}")
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return StoreError(
                f"cannot reach S3 endpoint {self.endpoint or 'AWS S3'} for bucket {self.bucket!r} to {what} ({exc}). "
                f"Check that the server is running and that the endpoint in the store URL {self.url} is right."
            )
        return StoreError(f"cannot {what} in store {self.url}: {exc}.")


_CREDENTIALS_HINT = (
    "Set MOEFORGE_S3_ACCESS_KEY and MOEFORGE_S3_SECRET_KEY (or boto3's AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY) to a key that may read and write this bucket."
)


def _client(endpoint: str | None, region: str | None, credentials: tuple[str, str] | None, max_attempts: int):
    key, secret = credentials if credentials else (None, None)
    session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name=region)
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        s3={"addressing_style": "path"} if endpoint else {},  # MinIO and most self-hosted servers need path style
        request_checksum_calculation="when_required",  # we send SHA-256 ourselves, not botocore's default CRC32
        response_checksum_validation="when_required",  # we re-hash every read ourselves, with a better message
    )
    return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config)


def _url(bucket: str, prefix: str, endpoint: str | None, region: str | None) -> str:
    query = urlencode({name: value for name, value in (("endpoint", endpoint), ("region", region)) if value}, safe=":/")
    return f"s3://{bucket}" + (f"/{prefix}" if prefix else "") + (f"?{query}" if query else "")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(data: bytes) -> str:
    """The base64 SHA-256 of data, as S3's ChecksumSHA256 carries it."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _same_as_hashed(data: bytes, digest: str, path: Path) -> bytes:
    _same_digest(sha256_hex(data), digest, path)
    return data


def _same_digest(actual: str, digest: str, path: Path) -> None:
    if actual != digest:
        raise StoreError(
            f"file {path} changed while it was being stored: it hashed to {digest}, then its bytes read for "
            f"upload hash to {actual}. Nothing was stored; store it again once nothing is writing to it."
        )
