"""Settings read once, at the CLI's entry point: where moeforge keeps its cached artifacts."""

import os
from pathlib import Path

from moeforge.testbed.config import TestbedConfig


def home() -> Path:
    """`$MOEFORGE_HOME`, or ~/.cache/moeforge."""
    return Path(os.environ.get("MOEFORGE_HOME") or Path.home() / ".cache" / "moeforge").expanduser()


def testbed_dir(preset: str, cfg: TestbedConfig) -> Path:
    """Where the testbed of this exact config is cached."""
    return home() / "testbed" / f"{preset}-{cfg.key()}"


def store_url() -> str:
    """`$MOEFORGE_STORE` (`file:///…` or `s3://bucket/prefix?endpoint=…`), or the folder store under home()."""
    return os.environ.get("MOEFORGE_STORE") or (home() / "store").as_uri()


def chain_url() -> str:
    """`$MOEFORGE_CHAIN` (`local:///…/chain.sqlite` or `bittensor://network?netuid=…`), or the local chain under home()."""
    return os.environ.get("MOEFORGE_CHAIN") or "local://" + str(home() / "chain.sqlite")


def catalog_url() -> str:
    """`$MOEFORGE_CATALOG` (`sqlite:///…` or `postgresql://…`), or the SQLite catalog of the library under home()."""
    return os.environ.get("MOEFORGE_CATALOG") or "sqlite:///" + str(home() / "library" / "catalog.sqlite")


def library_store_url() -> str:
    """`$MOEFORGE_LIBRARY_STORE` (a store URL), or the folder store of the library under home()."""
    return os.environ.get("MOEFORGE_LIBRARY_STORE") or (home() / "library" / "store").as_uri()


def s3_credentials() -> tuple[str, str] | None:
    """(access key, secret key) from `$MOEFORGE_S3_ACCESS_KEY`/`$MOEFORGE_S3_SECRET_KEY`; None → boto3's own chain."""
    key, secret = os.environ.get("MOEFORGE_S3_ACCESS_KEY"), os.environ.get("MOEFORGE_S3_SECRET_KEY")
    return (key, secret) if key and secret else None


def fault():
    """`$MOEFORGE_FAULT` (`role:point[@round]`, e.g. `miner:mid_upload@0`) as a `Fault`, or None: a test hook that makes
    the role SIGKILL itself at that point (issue 6; moeforge/network/faults.py lists the points)."""
    from moeforge.network.faults import ENV, parse_fault

    return parse_fault(os.environ.get(ENV))
