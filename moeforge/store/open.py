"""open_store: a store URL → the backend that serves it; the only place that picks a backend.

`file:///abs/folder` or a plain folder path → LocalStore; `s3://bucket/prefix?endpoint=…&region=…`
→ S3Store (boto3 is imported only then). Credentials never appear in the URL: they come from
settings, or from boto3's own chain.
"""

import re
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from moeforge.errors import ConfigError
from moeforge.extras import require
from moeforge.store.protocol import DEFAULT_MAX_OBJECT_BYTES, Store

FORMS = (
    "file:///absolute/folder",
    "a folder path",
    "s3://bucket/prefix?endpoint=http://host:9000&region=us-east-1 (endpoint and region optional)",
)
_S3_OPTIONS = ("endpoint", "region")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's naming rules, in short


def open_store(
    url: str, *, max_object_bytes: int | None = None, credentials: tuple[str, str] | None = None
) -> Store:
    """The store at url. max_object_bytes: largest object put accepts (default 2 GiB); credentials: S3 only."""
    limit = DEFAULT_MAX_OBJECT_BYTES if max_object_bytes is None else max_object_bytes
    if limit < 1:
        raise ConfigError(f"max_object_bytes={limit} for store {url!r}: the object size limit must be at least 1 byte.")
    if not url or not url.strip():
        raise ConfigError(f"empty store URL. Use one of: {'; '.join(FORMS)}.")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        require("s3", f"the S3 store {url!r}")
        from moeforge.store.s3 import S3Store  # boto3: only when an s3 store is opened

        bucket, prefix, options = _s3_parts(url, parts)
        return S3Store(bucket, prefix, **options, credentials=credentials, max_object_bytes=limit)
    from moeforge.store.local import LocalStore

    if parts.scheme == "file":
        return LocalStore(_file_path(url, parts), max_object_bytes=limit)
    if parts.scheme == "" or re.fullmatch(r"[a-zA-Z]", parts.scheme):  # a path (or a Windows drive letter)
        return LocalStore(Path(url), max_object_bytes=limit)
    raise ConfigError(f"store URL {url!r}: unknown scheme {parts.scheme + '://'!r}. Use one of: {'; '.join(FORMS)}.")


def _file_path(url: str, parts: SplitResult) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            f"store URL {url!r} names host {parts.netloc!r}; a file:// store is on this machine. "
            "Write file:///absolute/folder (three slashes), or use s3:// to share a store across machines."
        )
    if parts.query or parts.fragment or not parts.path.startswith("/"):
        raise ConfigError(f"store URL {url!r}: expected file:///absolute/folder, with no '?' or '#' part.")
    return Path(unquote(parts.path))


def _s3_parts(url: str, parts: SplitResult) -> tuple[str, str, dict[str, str]]:
    """(bucket, prefix, {endpoint, region}) of an s3:// URL, or ConfigError naming every problem."""
    problems = []
    if "@" in parts.netloc:
        problems.append("credentials do not belong in the URL: set MOEFORGE_S3_ACCESS_KEY and MOEFORGE_S3_SECRET_KEY")
    bucket = parts.netloc.rpartition("@")[2]
    if not _BUCKET.fullmatch(bucket):
        problems.append(
            f"bucket {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.' or '-')"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_S3_OPTIONS))
    if unknown:
        problems.append(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(_S3_OPTIONS)})")
    options = {}
    for name in _S3_OPTIONS:
        values = query.get(name, [])
        if len(values) > 1 or (values and not values[0]):
            problems.append(f"{name} must be given once, with a value")
        elif values:
            options[name] = values[0]
    endpoint = urlsplit(options.get("endpoint", "http://ok"))
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
        problems.append(
            f"endpoint {options['endpoint']!r} must be an http:// or https:// URL, such as http://127.0.0.1:9000"
        )
    if problems:
        raise ConfigError(f"store URL {url!r}: {'; '.join(problems)}. Expected the form {FORMS[2]}.")
    return bucket, unquote(parts.path).strip("/"), options
