"""Local folder backend, the default store: one read-only file per object at root/sha256/ab/<digest>.

An object appears only through `moeforge.atomic.write_file`: a temp file in its own directory,
fully written, fsynced and re-hashed, then renamed into place, so no reader ever sees a partial object: a crash leaves
at most a `.tmp-*` file, which reads and listings never look at. Processes writing the same
object race harmlessly, since each installs the same bytes under the same name.
"""

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import BinaryIO, TypeVar

from moeforge.atomic import write_file
from moeforge.retry import RetryPolicy, call_with_retries
from moeforge.errors import ArtifactNotFound, ConfigError, StoreError, StoreUnavailable
from moeforge.store.protocol import (
    CHUNK_BYTES,
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
    write_in_steps,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
TEMP_PREFIX = ".tmp-"  # in-progress writes; never an object, whatever they hold


class LocalStore:
    """Objects as files under one folder, created on the first put."""

    def __init__(self, root: str | PathLike[str], *, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
                 retry: RetryPolicy | None = None):
        """`retry`: how long to wait out an outage (the folder gone once it was there); default RetryPolicy()."""
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"store {self.root}: is a file, not a store folder. Pass a folder (file:///absolute/folder), "
                              "or move the file.")
        self.url = self.root.as_uri()
        self.max_object_bytes = max_object_bytes
        self._seen = self.root.is_dir()  # once there, a missing folder is an outage (a mount gone), never re-created
        self.retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def put(self, data: bytes, *, progress: Progress | None = None) -> str:
        check_size(len(data), self.max_object_bytes, self.url, "the object")
        digest = sha256_hex(data)
        if not self.exists(digest):
            self._reachable(f"store object {digest[:12]}…", lambda: self._install(digest, lambda out: write_in_steps(out, data, progress)))
        elif progress is not None:
            progress(len(data), len(data))
        return digest

    def put_file(self, path: str | PathLike[str]) -> str:
        path = Path(path)
        check_size(source_size(path), self.max_object_bytes, self.url, f"file {path}")
        with open_source(path) as src:
            digest, n_bytes = sha256_stream(src)
        check_size(n_bytes, self.max_object_bytes, self.url, f"file {path}")  # it may have grown since stat
        if not self.exists(digest):
            self._reachable(f"store {path}", lambda: self._install(digest, lambda out: _copy_file(path, out)))
        return digest

    def get(self, digest: str) -> bytes:
        return self._reachable(f"read object {digest[:12]}…", lambda: self._get(digest))

    def _get(self, digest: str) -> bytes:
        self._check_root()
        path = self._path(check_digest(digest))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._check_root()  # gone while reading: an outage, not a missing object
            raise self._not_found(digest) from None
        except OSError as exc:
            raise StoreError(
                f"cannot read object {digest} from store {self.url}: {exc}. Check the folder's permissions."
            ) from exc
        return check_content(digest, data, self.url)

    def exists(self, digest: str) -> bool:
        check_digest(digest)

        def look() -> bool:
            self._check_root()
            return self._path(digest).is_file()

        return self._reachable(f"look up object {digest[:12]}…", look)

    def size(self, digest: str) -> int:
        def stat() -> int:
            self._check_root()
            try:
                return self._path(check_digest(digest)).stat().st_size
            except FileNotFoundError:
                self._check_root()
                raise self._not_found(digest) from None

        return self._reachable(f"size object {digest[:12]}…", stat)

    def digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for fanout in sorted(entry.name for entry in os.scandir(base) if entry.is_dir()):
            for name in sorted(os.listdir(base / fanout)):
                if is_digest(name) and name[:2] == fanout:  # skips temp files and strays
                    yield name

    def _path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def _not_found(self, digest: str) -> ArtifactNotFound:
        return ArtifactNotFound(
            f"object {digest} is not in store {self.url} (no file {self._path(digest)}). "
            "Check the digest and the --store URL; `moeforge store ls` lists what the store holds."
        )

    def _check_root(self) -> None:
        """StoreUnavailable if the store's folder, once seen by this process, is gone (a mount down, a folder moved)."""
        if self.root.is_dir():
            self._seen = True
        elif self._seen:
            raise self._gone()

    def _gone(self) -> StoreUnavailable:
        return StoreUnavailable(f"store {self.url} is unreachable: its folder is gone (unmounted or moved?)")

    def _reachable(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt()`, retried with backoff while the store is unreachable, up to the retry policy's deadline."""
        return call_with_retries(lambda _: attempt(), what, self.retry, retry_on=StoreUnavailable, thing="store",
                                 longer="bring the folder back sooner, or open the store with a longer retry policy")

    def _install(self, digest: str, write: Callable[[BinaryIO], object]) -> None:
        """Write the object through `moeforge.atomic` (temp file beside it, fsync, rename), re-hashed before the rename."""
        self._check_root()
        if not self._seen:
            with self._os_errors("create the store folder"):
                self.root.mkdir(parents=True, exist_ok=True)
            self._seen = True
        final = self._path(digest)
        try:  # one level at a time, never the root itself: a root gone since the check is an outage, not re-created
            for folder in (final.parent.parent, final.parent):
                folder.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise self._gone() from None
        except OSError:
            pass  # the write below reports it, naming the object
        with self._os_errors(f"write object {digest}"):
            write_file(final, write, check=lambda temp: _check_written(temp, digest, self.url), read_only=True,
                       temp_prefix=f"{TEMP_PREFIX}{digest[:16]}-")
        log.debug("stored %s (%d bytes) in %s", digest, final.stat().st_size, self.url)

    @contextmanager
    def _os_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreError(
                f"cannot {action} in store {self.url}: {exc}. "
                "Check that the folder is writable and the disk has room, or pass another --store."
            ) from exc


def _copy_file(path: Path, out: BinaryIO) -> None:
    with open_source(path) as src:
        shutil.copyfileobj(src, out, CHUNK_BYTES)


def _check_written(temp: Path, digest: str, store_url: str) -> None:
    with open(temp, "rb") as written:
        actual, n_bytes = sha256_stream(written)
    if actual != digest:
        raise StoreError(
            f"object {digest} was not stored in {store_url}: the {n_bytes:,} bytes written hash to {actual}. "
            "The source changed while it was being stored, or the disk is failing; nothing was stored, retry."
        )
