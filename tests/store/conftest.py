"""Store fixtures: every backend the contract suite runs against, each with its own ways to fail.

`backend` is parametrised over `local` (a folder under tmp_path) and `s3` (a bucket on a moto
server on loopback, so boto3 sends real HTTP). Each backend object offers the same damage and
fault-injection methods, done the way that backend really fails: a local writer is killed
mid-write; an S3 upload has its bytes corrupted on the wire and the server refuses them.
"""

import base64
import contextlib
import hashlib
import io
import math
import multiprocessing
import os
import signal
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moeforge.store.local import TEMP_PREFIX, LocalStore
from moeforge.store.open import open_store
from moeforge.store.protocol import sha256_hex

BUCKET = "moeforge-test"
CREDENTIALS = ("testing", "testing")  # moto accepts any key; passed explicitly so no ~/.aws is read
PART_BYTES = 5 * 1024**2  # S3's smallest part, so multipart uploads are exercised with a few MiB
LIMIT = 64 * 1024**2
_SPAWN = multiprocessing.get_context("spawn")  # children start clean: no copied threads or sockets
_CHILD_TIMEOUT_S = 60


# --- the moto server -----------------------------------------------------------------------------


def _bad_digest_xml() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>BadDigest</Code>'
        b"<Message>The SHA256 you specified did not match the calculated checksum.</Message></Error>"
    )


def _checking_sha256(app: Callable) -> Callable:
    """WSGI middleware: refuse a PUT whose body does not match its x-amz-checksum-sha256, as S3 does.

    moto 5.2.5 stores the claimed checksum without checking it; S3, MinIO and R2 answer 400 BadDigest.
    """

    def checked(environ, start_response):
        claimed = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
        if environ["REQUEST_METHOD"] == "PUT" and claimed:
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            if base64.b64encode(hashlib.sha256(body).digest()).decode() != claimed:
                start_response("400 Bad Request", [("Content-Type", "application/xml")])
                return [_bad_digest_xml()]
        return app(environ, start_response)

    return checked


def wait_until(ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ready() until it holds; fail with what after timeout_s (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s} s")
        time.sleep(0.01)  # poll interval only; returns as soon as ready() holds


_RAW_CLIENTS: dict[str, object] = {}


def raw_client(endpoint: str):
    """A plain boto3 client for the test server, to inspect and damage objects behind the store's back."""
    if endpoint in _RAW_CLIENTS:
        return _RAW_CLIENTS[endpoint]
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=CREDENTIALS[0], aws_secret_access_key=CREDENTIALS[1], region_name="us-east-1"
    )
    config = Config(
        s3={"addressing_style": "path"}, retries={"max_attempts": 1}, request_checksum_calculation="when_required"
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT of a moto S3 server in a thread of this process, with one bucket."""
    from botocore.exceptions import EndpointConnectionError
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # As moto.server.ThreadedMotoServer builds it, with the checksum check S3 does wrapped around it.
    app = _checking_sha256(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    client = raw_client(endpoint)

    def answers() -> bool:
        try:
            client.list_buckets()
        except EndpointConnectionError:
            return False
        return True

    wait_until(answers, timeout_s=10, what=f"moto S3 server at {endpoint}")
    client.create_bucket(Bucket=BUCKET)
    _RAW_CLIENTS[endpoint] = client
    yield endpoint
    server.shutdown()
    thread.join(timeout=10)


# --- backends ------------------------------------------------------------------------------------


class LocalBackend:
    """A folder store; failures are real processes killed mid-write."""

    name = "local"

    def __init__(self, root: Path):
        self.root = root
        self.store = LocalStore(root, max_object_bytes=LIMIT)
        self.url, self.credentials = self.store.url, None

    def reopen(self, max_object_bytes: int) -> LocalStore:
        return open_store(self.url, max_object_bytes=max_object_bytes)

    def flip_byte(self, digest: str) -> bytes:
        """Flip one bit of the stored file in place; → the damaged bytes."""
        path = self.root / "sha256" / digest[:2] / digest
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.chmod(0o644)  # objects are stored read-only
        path.write_bytes(bytes(data))
        return bytes(data)

    def leftovers(self) -> list[str]:
        """In-progress writes that were never finished or cleaned up: temp files."""
        return sorted(path.name for path in self.root.glob(f"sha256/*/{TEMP_PREFIX}*"))

    def interrupted_put(self, data: bytes) -> None:
        """A writer process killed after writing the bytes, before fsync and rename."""
        _run_killed_child(_put_killed_before_fsync, self.url, data)
        assert self.leftovers(), "the killed writer should have left its temp file behind"

    def interrupted_put_file(self, path: Path) -> None:
        """A writer process killed part-way through copying the file."""
        _run_killed_child(_put_file_killed_mid_copy, self.url, path)
        (temp,) = self.root.glob(f"sha256/*/{TEMP_PREFIX}*")
        assert 0 < temp.stat().st_size < path.stat().st_size, "the temp file should hold a partial copy"

    @contextlib.contextmanager
    def streaming(self, n_bytes: int) -> Iterator[None]:
        """Check the work inside never holds the whole file in memory."""
        tracemalloc.start()
        try:
            yield
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < n_bytes / 4, f"put_file peaked at {peak:,} bytes for a {n_bytes:,}-byte file"


class S3Backend:
    """A prefix of the moto bucket; failures are uploads corrupted on the wire, refused by the server."""

    name = "s3"

    def __init__(self, endpoint: str, prefix: str, raw):
        from moeforge.store.s3 import S3Store

        self.endpoint, self.prefix, self.raw = endpoint, prefix, raw
        self.store = S3Store(
            BUCKET, prefix, endpoint=endpoint, credentials=CREDENTIALS, max_object_bytes=LIMIT, part_bytes=PART_BYTES
        )
        self.url, self.credentials = self.store.url, CREDENTIALS

    def reopen(self, max_object_bytes: int):
        return open_store(self.url, max_object_bytes=max_object_bytes, credentials=CREDENTIALS)

    def key(self, digest: str) -> str:
        return f"{self.prefix}/sha256/{digest}"

    def flip_byte(self, digest: str) -> bytes:
        """Overwrite the object with one bit flipped, straight through boto3; → the damaged bytes."""
        data = bytearray(self.raw.get_object(Bucket=BUCKET, Key=self.key(digest))["Body"].read())
        data[len(data) // 2] ^= 0x01
        self.raw.put_object(Bucket=BUCKET, Key=self.key(digest), Body=bytes(data))
        return bytes(data)

    def leftovers(self) -> list[str]:
        """In-progress writes that were never finished or aborted: open multipart uploads."""
        uploads = self.raw.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix).get("Uploads", [])
        return sorted(upload["Key"] for upload in uploads)

    def interrupted_put(self, data: bytes) -> None:
        """A PUT whose body is corrupted on the wire: it no longer matches its ChecksumSHA256."""
        from moeforge.errors import StoreError

        with self._watching("PutObject", corrupt_call=1) as calls, pytest.raises(StoreError, match="BadDigest") as info:
            self.store.put(data)
        assert calls == [1] and sha256_hex(data) in str(info.value)
        assert not self.leftovers()

    def interrupted_put_file(self, path: Path) -> None:
        """A multipart upload whose second part is corrupted on the wire; the store must abort it."""
        from moeforge.errors import StoreError

        with self._watching("UploadPart", corrupt_call=2) as calls, pytest.raises(StoreError, match="BadDigest"):
            self.store.put_file(path)
        assert calls == [1, 2], "part 1 should have gone up before part 2 was refused"
        assert not self.leftovers(), "the failed multipart upload should have been aborted"

    @contextlib.contextmanager
    def streaming(self, n_bytes: int) -> Iterator[None]:
        """Check the work inside goes up as a multipart upload of PART_BYTES parts."""
        with self._watching("UploadPart", corrupt_call=None) as calls:
            yield
        assert len(calls) == math.ceil(n_bytes / PART_BYTES), f"expected a multipart upload, saw parts {calls}"

    @contextlib.contextmanager
    def _watching(self, operation: str, corrupt_call: int | None) -> Iterator[list[int]]:
        """Count the store's `operation` requests; flip a bit in the body of the corrupt_call-th one as it is sent."""
        calls: list[int] = []

        def before_send(request, **_):
            calls.append(len(calls) + 1)
            if calls[-1] == corrupt_call:
                body = bytearray(request.body.read())
                body[len(body) // 2] ^= 0x01
                request.body = io.BytesIO(bytes(body))

        events = self.store._client.meta.events  # fault injection: the one place tests reach inside
        event = f"before-send.s3.{operation}"
        events.register(event, before_send)
        try:
            yield calls
        finally:
            events.unregister(event, before_send)


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    if request.param == "local":
        return LocalBackend(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Backend(endpoint, prefix=f"test-{uuid.uuid4().hex[:12]}", raw=raw_client(endpoint))


@pytest.fixture
def store(backend):
    return backend.store


# --- child processes -----------------------------------------------------------------------------


def _run_killed_child(target: Callable, *args) -> None:
    child = _SPAWN.Process(target=target, args=args)
    child.start()
    child.join(_CHILD_TIMEOUT_S)
    assert child.exitcode == -signal.SIGKILL, f"the writer should have been killed, exit code {child.exitcode}"


def _kill_self(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _put_killed_before_fsync(url: str, data: bytes) -> None:
    os.fsync = _kill_self  # this child only: die with the bytes written but not yet renamed into place
    open_store(url).put(data)


def _put_file_killed_mid_copy(url: str, path: Path) -> None:
    import shutil

    def copy_half_then_die(src, dst, length=0):
        dst.write(src.read(os.fstat(src.fileno()).st_size // 2))
        dst.flush()
        _kill_self()

    shutil.copyfileobj = copy_half_then_die  # this child only
    open_store(url).put_file(path)


def put_all(url: str, credentials, blobs: list[bytes], barrier, results) -> None:
    """Child process: put every blob once all writers are ready; report the digests."""
    store = open_store(url, credentials=credentials)
    barrier.wait(timeout=_CHILD_TIMEOUT_S)
    results.put(("writer", [store.put(blob) for blob in blobs]))


def read_while_written(url: str, credentials, digests: list[str], barrier, results) -> None:
    """Child process: read every object as soon as it exists; any partial object fails its hash check."""
    store = open_store(url, credentials=credentials)
    barrier.wait(timeout=_CHILD_TIMEOUT_S)
    deadline, seen = time.monotonic() + _CHILD_TIMEOUT_S, {}
    while len(seen) < len(digests) and time.monotonic() < deadline:
        for digest in digests:
            if digest not in seen and store.exists(digest):
                seen[digest] = sha256_hex(store.get(digest))
    results.put(("reader", seen))


def run_children(targets: list[tuple[Callable, tuple]]) -> list[tuple[str, object]]:
    """Start one spawned process per (target, args) behind a shared barrier; → what each reported."""
    barrier, results = _SPAWN.Barrier(len(targets)), _SPAWN.Queue()
    children = [_SPAWN.Process(target=target, args=(*args, barrier, results)) for target, args in targets]
    for child in children:
        child.start()
    reports = [results.get(timeout=_CHILD_TIMEOUT_S) for _ in children]
    for child in children:
        child.join(_CHILD_TIMEOUT_S)
        assert child.exitcode == 0, f"child exited with {child.exitcode}"
    return reports
