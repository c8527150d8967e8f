"""Tests for moeforge/store/open.py: store URLs → backends, and every malformed URL refused by name."""

import subprocess
import sys
from pathlib import Path

import pytest

from moeforge.errors import ConfigError
from moeforge.store.local import LocalStore
from moeforge.store.open import FORMS, open_store
from moeforge.store.protocol import DEFAULT_MAX_OBJECT_BYTES


def test_file_url_opens_a_local_store_at_that_folder(tmp_path):
    store = open_store(tmp_path.as_uri())
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path and store.url == tmp_path.as_uri()
    assert store.max_object_bytes == DEFAULT_MAX_OBJECT_BYTES
    assert open_store(store.url).root == tmp_path  # the url round-trips


def test_file_url_with_escaped_characters_and_localhost(tmp_path):
    folder = tmp_path / "my store"
    assert open_store(folder.as_uri()).root == folder  # as_uri writes the space as %20
    assert open_store(f"file://localhost{folder.as_posix()}").root == folder


def test_plain_paths_open_local_stores(tmp_path, monkeypatch):
    assert open_store(str(tmp_path / "a")).root == tmp_path / "a"
    monkeypatch.chdir(tmp_path)
    assert open_store("relative/store").root == tmp_path / "relative" / "store"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_store("~/s").root == tmp_path / "s"


def test_size_limit_is_passed_to_the_backend(tmp_path):
    assert open_store(str(tmp_path), max_object_bytes=123).max_object_bytes == 123
    with pytest.raises(ConfigError, match="max_object_bytes=0"):
        open_store(str(tmp_path), max_object_bytes=0)


def test_s3_url_is_parsed_into_bucket_prefix_endpoint_and_region():
    from moeforge.store.s3 import S3Store

    url = "s3://experts/jobs/math?endpoint=http://127.0.0.1:9000&region=eu-west-1"
    store = open_store(url, credentials=("AKIDEXAMPLE", "secret-not-in-url"), max_object_bytes=10)
    assert isinstance(store, S3Store)
    parsed = (store.bucket, store.prefix, store.endpoint, store.region)
    assert parsed == ("experts", "jobs/math", "http://127.0.0.1:9000", "eu-west-1")
    assert store.url == url and store.max_object_bytes == 10
    assert "secret" not in store.url and "AKID" not in repr(store)


def test_s3_url_without_options_means_aws_and_the_bucket_root():
    store = open_store("s3://experts")
    assert (store.bucket, store.prefix, store.endpoint, store.region) == ("experts", "", None, None)
    assert store.url == "s3://experts"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("s3://Bad_Bucket/p", "bucket 'Bad_Bucket' is not a valid bucket name"),
        ("s3://key:secret@experts/p", "credentials do not belong in the URL"),
        ("s3://experts/p?endpoint=127.0.0.1:9000", "endpoint '127.0.0.1:9000' must be an http:// or https:// URL"),
        ("s3://experts/p?endpoint=", "endpoint must be given once, with a value"),
        ("s3://experts/p?region=a&region=b", "region must be given once"),
        ("s3://experts/p?endpiont=http://x:9000", "unknown option(s) endpiont (known: endpoint, region)"),
    ],
)
def test_malformed_s3_urls_are_refused_naming_the_problem(url, named):
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert named in str(info.value) and repr(url) in str(info.value)


def test_every_problem_of_an_s3_url_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        open_store("s3://B/p?endpoint=ftp://x&colour=red")
    message = str(info.value)
    assert "bucket 'B'" in message and "colour" in message and "'ftp://x'" in message


@pytest.mark.parametrize("url", ["file://otherhost/srv/store", "file:relative/store", "file:///srv/store?x=1"])
def test_malformed_file_urls_are_refused(url):
    with pytest.raises(ConfigError, match="file:///absolute/folder") as info:
        open_store(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("url", ["ftp://host/store", "gs://bucket/prefix", "http://127.0.0.1:9000/bucket"])
def test_unknown_scheme_lists_the_supported_forms(url):
    with pytest.raises(ConfigError, match="unknown scheme") as info:
        open_store(url)
    message = str(info.value)
    assert repr(url) in message and all(form in message for form in FORMS)


@pytest.mark.parametrize("url", ["", "   "])
def test_empty_url_is_refused(url):
    with pytest.raises(ConfigError, match="empty store URL"):
        open_store(url)


def test_opening_a_local_store_does_not_import_boto3(tmp_path):
    code = (
        "import sys; from moeforge.store.open import open_store; "
        f"open_store({str(tmp_path)!r}); print('boto3' in sys.modules)"
    )
    repo = Path(__file__).parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
