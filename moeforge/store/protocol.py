"""The Store protocol: content-addressed blobs whose key is the sha256 hex digest of the bytes.

DESIGN.md "Substrate": roles exchange artifacts only through the chain and this store, so a
reader never trusts the bytes it is given: every backend re-hashes on every read. Backends
share code through the functions here, not through a base class (STYLE.md §4).
"""

import hashlib
import re
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import BinaryIO, Protocol

from moeforge.errors import ArtifactNotFound, ConfigError, StoreError

DEFAULT_MAX_OBJECT_BYTES = 2 * 1024**3  # 2 GiB: the largest expert state we expect, with room to spare
CHUNK_BYTES = 1024 * 1024  # read size when streaming files through a hash
PROGRESS_STEPS = 8  # a put reports its progress at least this often, whatever the object's size
_DIGEST = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[int, int], object]  # (bytes written so far, bytes in all), after each piece of a put


class Store(Protocol):
    """Content-addressed blobs; the key is the sha256 hex digest of the bytes."""

    url: str  # where the store lives, without credentials: file:///… or s3://bucket/prefix?…
    max_object_bytes: int  # put/put_file refuse anything larger

    def put(self, data: bytes, *, progress: Progress | None = None) -> str: ...  # → digest; idempotent; StoreError
    # if over max_object_bytes; `progress(done, total)` after each piece written (once, at the end, for one request)

    def put_file(self, path: str | PathLike[str]) -> str: ...  # streams the file; → digest

    def get(self, digest: str) -> bytes: ...  # ArtifactNotFound; StoreError if the bytes do not hash to digest

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...  # bytes; ArtifactNotFound

    def digests(self) -> Iterator[str]: ...  # every stored object, in lexicographic order


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest of data: the key it is stored under."""
    return hashlib.sha256(data).hexdigest()


def write_in_steps(out: BinaryIO, data: bytes, progress: Progress | None) -> None:
    """Write `data` to `out` in pieces (at most CHUNK_BYTES, at least PROGRESS_STEPS of them), reporting each."""
    if progress is None:
        out.write(data)
        return
    step = max(1, min(CHUNK_BYTES, -(-len(data) // PROGRESS_STEPS)))
    for start in range(0, len(data), step):
        out.write(data[start : start + step])
        progress(min(start + step, len(data)), len(data))
    if not data:
        progress(0, 0)


def sha256_stream(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, int]:
    """(sha256 hex digest, byte count) of everything left in a binary stream, read in chunks."""
    hasher, n = hashlib.sha256(), 0
    while chunk := stream.read(chunk_bytes):
        hasher.update(chunk)
        n += len(chunk)
    return hasher.hexdigest(), n


def check_digest(text: str) -> str:
    """text if it is a sha256 hex digest (64 lowercase hex characters), else ConfigError quoting it."""
    if not isinstance(text, str) or not _DIGEST.fullmatch(text):
        shown = text if len(str(text)) <= 80 else f"{str(text)[:77]}…"
        raise ConfigError(
            f"{shown!r} is not an artifact digest: expected 64 lowercase hex characters (a sha256), "
            f"got {len(str(text))} characters. Copy the digest printed by `moeforge store put` or `moeforge store ls`."
        )
    return text


def is_digest(text: str) -> bool:
    """Whether text is a sha256 hex digest; for filtering listings, where other names are skipped."""
    return bool(_DIGEST.fullmatch(text))


def source_size(path: Path) -> int:
    """Size of a file about to be stored; ArtifactNotFound / ConfigError if it is not a file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ArtifactNotFound(f"no file {path} to store. Check the path.") from None
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder; the store takes one file at a time. Pass a file, or pack the folder first."
        )
    return stat.st_size


def open_source(path: Path) -> BinaryIO:
    """path opened for reading; ConfigError if it may not be read."""
    try:
        return open(path, "rb")
    except PermissionError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}. Check the file's permissions.") from exc


def check_size(n_bytes: int, limit: int, store_url: str, what: str) -> None:
    """StoreError if an object of n_bytes is over the store's per-object limit."""
    if n_bytes > limit:
        raise StoreError(
            f"{what} is {n_bytes:,} bytes, over the {limit:,}-byte object limit of store {store_url}; "
            "nothing was stored. Split the artifact, or open the store with a larger max_object_bytes."
        )


def check_content(digest: str, data: bytes, store_url: str) -> bytes:
    """data if it hashes to digest, else StoreError naming both hashes and the store."""
    actual = sha256_hex(data)
    if actual != digest:
        raise corrupt_error(digest, actual, len(data), store_url)
    return data


def corrupt_error(digest: str, actual: str, n_bytes: int, store_url: str) -> StoreError:
    """The error for an object whose bytes do not hash to its name."""
    return StoreError(
        f"object {digest} in store {store_url} is corrupt: its {n_bytes:,} bytes hash to {actual}. "
        "Delete it and put the artifact again from a good copy; run `moeforge store verify` to check the rest."
    )
