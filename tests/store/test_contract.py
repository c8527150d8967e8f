"""The Store contract, run against every backend (local folder, S3 on moto); then S3's own errors.

Tests moeforge/store/protocol.py, local.py and s3.py through the one Protocol (STYLE.md §7).
"""

import base64
import hashlib
import io
import os
import socket
import sys

import pytest
from botocore.stub import Stubber

from moeforge.errors import ArtifactNotFound, ConfigError, StoreError
from moeforge.store.protocol import check_digest, sha256_hex
from moeforge.store.s3 import S3Store
from tests.store.conftest import (
    BUCKET,
    CREDENTIALS,
    PART_BYTES,
    put_all,
    raw_client,
    read_while_written,
    run_children,
)

MISSING = hashlib.sha256(b"never stored").hexdigest()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """(path, bytes) of a 16 MiB file: several S3 parts, many local copy chunks."""
    data = os.urandom(16 * 1024**2 + 12345)
    path = tmp_path_factory.mktemp("big") / "expert_state.safetensors"
    path.write_bytes(data)
    return path, data


def assert_absent(store, digest):
    assert not store.exists(digest)
    assert digest not in list(store.digests())
    with pytest.raises(ArtifactNotFound, match=digest):
        store.get(digest)


# --- round trips ---------------------------------------------------------------------------------


def test_put_then_get_returns_the_same_bytes_under_their_sha256(store):
    data = os.urandom(10_000)
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest() == sha256_hex(data)
    assert store.get(digest) == data


def test_a_put_reports_its_progress_ending_with_every_byte(store):
    data = os.urandom(10_000)
    seen = []
    store.put(data, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (10_000, 10_000) and all(total == 10_000 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    if store.url.startswith("file:"):  # a folder store writes in pieces, reporting each
        assert len(seen) == 8 and seen[3] == (5_000, 10_000)
    seen.clear()
    store.put(data, progress=lambda done, total: seen.append((done, total)))  # already there: done at once
    assert seen == [(10_000, 10_000)]


def test_empty_object_round_trips(store):
    digest = store.put(b"")
    assert digest == hashlib.sha256(b"").hexdigest()
    assert store.get(digest) == b"" and store.size(digest) == 0


def test_put_is_idempotent(store):
    data = b"the same expert delta"
    assert store.put(data) == store.put(data)
    assert list(store.digests()) == [sha256_hex(data)]
    assert store.get(sha256_hex(data)) == data


def test_exists_size_and_digests_describe_what_was_put(store):
    blobs = [os.urandom(n) for n in (1, 300, 70_000)]
    digests = [store.put(blob) for blob in blobs]
    assert list(store.digests()) == sorted(digests)
    for digest, blob in zip(digests, blobs):
        assert store.exists(digest)
        assert store.size(digest) == len(blob)
    assert not store.exists(MISSING)


def test_put_file_streams_a_multi_megabyte_file(backend, big_file):
    path, data = big_file
    with backend.streaming(len(data)):
        digest = backend.store.put_file(path)
    assert digest == sha256_hex(data)
    assert backend.store.size(digest) == len(data)
    assert backend.store.get(digest) == data
    assert backend.store.put_file(path) == digest  # idempotent too
    assert list(backend.store.digests()) == [digest]


def test_put_file_and_put_agree_on_the_digest(store, tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(b"x" * 4096)
    assert store.put_file(path) == store.put(b"x" * 4096)
    assert len(list(store.digests())) == 1


# --- bad input -----------------------------------------------------------------------------------


def test_missing_object_is_artifact_not_found_naming_the_digest(store):
    with pytest.raises(ArtifactNotFound, match=MISSING) as info:
        store.get(MISSING)
    assert store.url in str(info.value)
    with pytest.raises(ArtifactNotFound, match=MISSING):
        store.size(MISSING)


@pytest.mark.parametrize("bad", ["abc", MISSING.upper(), MISSING + "0", "g" * 64, "../" + MISSING[3:], ""])
def test_malformed_digest_is_a_config_error_quoting_it(store, bad):
    for call in (store.get, store.exists, store.size):
        with pytest.raises(ConfigError, match="64 lowercase hex") as info:
            call(bad)
        assert repr(bad) in str(info.value)


def test_check_digest_returns_a_good_digest_unchanged():
    assert check_digest(MISSING) == MISSING


def test_missing_source_file_is_artifact_not_found(store, tmp_path):
    with pytest.raises(ArtifactNotFound, match="nowhere.bin"):
        store.put_file(tmp_path / "nowhere.bin")
    with pytest.raises(ConfigError, match="is a folder"):
        store.put_file(tmp_path)


def test_object_over_the_size_limit_is_refused_and_nothing_is_stored(backend, tmp_path):
    store = backend.reopen(max_object_bytes=1000)
    assert store.max_object_bytes == 1000
    with pytest.raises(StoreError, match="1,001 bytes, over the 1,000-byte object limit"):
        store.put(b"x" * 1001)
    path = tmp_path / "big.bin"
    path.write_bytes(b"y" * 5000)
    with pytest.raises(StoreError, match=f"file {path} is 5,000 bytes, over the 1,000-byte"):
        store.put_file(path)
    assert list(store.digests()) == []
    assert_absent(store, sha256_hex(b"x" * 1001))
    assert store.get(store.put(b"z" * 1000)) == b"z" * 1000  # the limit itself is allowed


# --- damage and interruption ---------------------------------------------------------------------


def test_a_flipped_byte_is_detected_on_read_naming_the_object(backend):
    data = os.urandom(50_000)
    digest = backend.store.put(data)
    damaged = backend.flip_byte(digest)
    assert backend.store.exists(digest)  # still there, but no longer what its name says
    with pytest.raises(StoreError, match="corrupt") as info:
        backend.store.get(digest)
    message = str(info.value)
    assert digest in message and sha256_hex(damaged) in message and backend.store.url in message


def test_an_interrupted_put_is_never_visible(backend):
    data = os.urandom(200_000)
    backend.interrupted_put(data)
    assert_absent(backend.store, sha256_hex(data))
    assert list(backend.store.digests()) == []
    assert backend.store.get(backend.store.put(data)) == data  # and a later put succeeds


def test_an_interrupted_put_file_is_never_visible(backend, big_file):
    path, data = big_file
    backend.interrupted_put_file(path)
    assert_absent(backend.store, sha256_hex(data))
    assert list(backend.store.digests()) == []
    assert backend.store.get(backend.store.put_file(path)) == data


@pytest.mark.parametrize("n_bytes", [3000, 2 * PART_BYTES + 1], ids=["one-piece", "multipart"])
def test_a_file_that_changes_while_being_stored_is_refused(backend, tmp_path, monkeypatch, n_bytes):
    path = tmp_path / "growing.bin"
    path.write_bytes(b"a" * n_bytes)
    module = sys.modules[type(backend.store).__module__]
    original, opened = module.open_source, []

    def open_changed(source):  # the first read (hashing) sees the file; later reads see it rewritten
        opened.append(source)
        return original(source) if len(opened) == 1 else io.BytesIO(b"b" * n_bytes)

    monkeypatch.setattr(module, "open_source", open_changed)
    with pytest.raises(StoreError, match="changed while") as info:
        backend.store.put_file(path)
    assert sha256_hex(b"b" * n_bytes) in str(info.value)
    assert len(opened) == 2
    assert_absent(backend.store, sha256_hex(b"a" * n_bytes))
    assert list(backend.store.digests()) == [] and backend.leftovers() == []


def test_concurrent_writers_of_the_same_objects_all_succeed_and_readers_never_see_a_partial_one(backend):
    blobs = [os.urandom(1024**2 + n) for n in range(4)]
    digests = [sha256_hex(blob) for blob in blobs]
    writer = (put_all, (backend.url, backend.credentials, blobs))
    reader = (read_while_written, (backend.url, backend.credentials, digests))
    reports = run_children([writer, writer, writer, reader])
    assert sorted(reports, key=lambda report: report[0]) == [
        ("reader", dict(zip(digests, digests))),  # every object read back whole, hash-checked by get
        ("writer", digests),
        ("writer", digests),
        ("writer", digests),
    ]
    assert list(backend.store.digests()) == sorted(digests)
    assert [backend.store.get(digest) for digest in digests] == blobs
    assert backend.leftovers() == []


# --- S3 only: errors a user must be able to act on -----------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_s3_puts_carry_their_sha256_checksum(s3_endpoint):
    store = S3Store(BUCKET, "checksum", endpoint=s3_endpoint, credentials=CREDENTIALS)
    digest = store.put(b"checked on arrival")
    head = raw_client(s3_endpoint).head_object(Bucket=BUCKET, Key=f"checksum/sha256/{digest}", ChecksumMode="ENABLED")
    assert bytes.fromhex(digest) == base64.b64decode(head["ChecksumSHA256"])


def test_s3_unreachable_endpoint_names_endpoint_and_bucket():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = S3Store(BUCKET, "p", endpoint=endpoint, credentials=CREDENTIALS, max_attempts=1)
    for call in (lambda: store.put(b"x"), lambda: store.get(MISSING), lambda: list(store.digests())):
        with pytest.raises(StoreError, match="cannot reach S3 endpoint") as info:
            call()
        assert endpoint in str(info.value) and repr(BUCKET) in str(info.value)


def test_s3_missing_bucket_is_a_store_error_not_a_missing_object(s3_endpoint):
    store = S3Store("no-such-bucket", "p", endpoint=s3_endpoint, credentials=CREDENTIALS)
    calls = (lambda: store.exists(MISSING), lambda: store.get(MISSING), lambda: store.put(b"x"))
    calls += (lambda: list(store.digests()),)
    for call in calls:
        with pytest.raises(StoreError, match="'no-such-bucket' at .* does not exist"):
            call()


@pytest.mark.parametrize(
    ("code", "status", "says"),
    [
        ("InvalidAccessKeyId", 403, "refused the credentials.*InvalidAccessKeyId.*MOEFORGE_S3_ACCESS_KEY"),
        ("PermanentRedirect", 301, "in another region.*PermanentRedirect.*region= in the store URL"),
        ("SlowDown", 503, "cannot look up object .*: SlowDown: stubbed"),
    ],
)
def test_s3_server_refusals_say_what_to_fix(s3_endpoint, code, status, says):
    store = S3Store(BUCKET, "p", endpoint=s3_endpoint, credentials=CREDENTIALS)
    with Stubber(store._client) as stub:  # moto takes any key in any region; stub only the server's answer
        stub.add_client_error("head_object", code, "stubbed", http_status_code=status)
        with pytest.raises(StoreError, match=says) as info:
            store.exists(MISSING)
    assert repr(BUCKET) in str(info.value) or store.url in str(info.value)


def test_s3_without_any_credentials_says_how_to_give_them(s3_endpoint, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(BUCKET, "p", endpoint=s3_endpoint)
    with pytest.raises(StoreError, match="no S3 credentials.*MOEFORGE_S3_ACCESS_KEY"):
        store.get(MISSING)


def test_s3_part_size_below_the_s3_minimum_is_refused():
    with pytest.raises(ConfigError, match="minimum part size"):
        S3Store(BUCKET, endpoint="http://127.0.0.1:9", part_bytes=PART_BYTES - 1)
