"""open_chain: a chain URL → a backend; the only place that picks one (STYLE.md §4).

    local:///abs/path/chain.sqlite[?block_seconds=12&netuid=1&max_validators=64&retry_s=120]   (or ?lockstep_s=30)
    bittensor://finney|test|local|ws://host:port|wss://host[?netuid=N&wallet=NAME&hotkey=HOT&path=DIR&finalize=1
                                                            &retry_s=120]

The backend comes wrapped in `retry.RetryingChain` (`RetryingLocalChain` for a local chain, which
keeps the admin moves), so a chain that cannot be reached for a while is retried with backoff for
`retry_s` seconds (default `RetryPolicy().deadline_s`; 0 = never retry) before `ChainUnavailable`.
The bittensor backend (and the SDK's half-second import) loads only when a bittensor URL is opened.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, unquote

from moeforge.chain.protocol import Chain
from moeforge.chain.retry import RetryingChain, RetryingLocalChain
from moeforge.retry import RetryPolicy, call_with_retries
from moeforge.errors import ConfigError

log = logging.getLogger(__name__)

SUPPORTED = (
    "local:///abs/path/chain.sqlite?block_seconds=12",
    "bittensor://finney?netuid=N&wallet=NAME&hotkey=HOT&path=DIR (or test, local, ws://host:port)",
)
_LOCAL_OPTIONS = {"block_seconds": float, "lockstep_s": float, "netuid": int, "max_validators": int, "retry_s": float}
_BITTENSOR_OPTIONS = {"netuid": int, "wallet": str, "hotkey": str, "path": str, "finalize": "bool", "retry_s": float}
_LOCAL_KEYWORDS = {"clock", "busy_timeout_s"}  # Python-only options, passed as keywords
_BITTENSOR_KEYWORDS = {"substrate"}


def open_chain(url: str, *, retry: RetryPolicy | bool = True, **options: Any) -> Chain:
    """The chain at URL; keyword OPTIONS add to or override the URL's query (e.g. a test clock or substrate).

    RETRY: True (default) retries an unreachable chain under `RetryPolicy()` with the URL's `retry_s` as
    its deadline; a `RetryPolicy` sets the policy (`retry_s` still sets its deadline); False opens the
    bare backend, which raises `ChainUnavailable` at once.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("local", "bittensor"):
        raise ConfigError(f"chain URL {url!r}: unsupported form; expected one of: " + "; ".join(SUPPORTED) + ".")
    target, _, query = rest.partition("?")
    if scheme == "local":
        _check_keywords(url, options, _LOCAL_OPTIONS.keys() | _LOCAL_KEYWORDS)
        options = {**_options(url, query, _LOCAL_OPTIONS), **options}
        return _open_local(url, unquote(target), options, _policy(url, retry, options.pop("retry_s", None)))
    _check_keywords(url, options, _BITTENSOR_OPTIONS.keys() | _BITTENSOR_KEYWORDS)
    options = {**_options(url, query, _BITTENSOR_OPTIONS), **options}
    return _open_bittensor(url, unquote(target), options, _policy(url, retry, options.pop("retry_s", None)))


def _policy(url: str, retry: RetryPolicy | bool, retry_s: float | None) -> RetryPolicy | None:
    """The retry policy RETRY and the URL's RETRY_S ask for; None for no retries."""
    if retry is False:
        if retry_s is not None:
            raise ConfigError(f"chain URL {url!r}: retry_s={retry_s:g} asks for retries, but retry=False turns them "
                              "off; drop one of the two.")
        return None
    policy = retry if isinstance(retry, RetryPolicy) else RetryPolicy()
    if retry_s is None:
        return policy
    try:
        return replace(policy, deadline_s=retry_s)
    except ConfigError as exc:
        raise ConfigError(f"chain URL {url!r}: retry_s={retry_s:g} is not a valid deadline: {exc}") from None


def _open_local(url: str, path: str, options: dict[str, Any], policy: RetryPolicy | None) -> Chain:
    from moeforge.chain.local import LocalChain

    if not path.startswith("/"):
        raise ConfigError(f"chain URL {url!r}: a local chain needs an absolute path, e.g. local:///var/lib/moeforge/chain.sqlite "
                          "(three slashes: local:// then /path).")
    if policy is None:
        return LocalChain(path, **options)

    def open_once(_: int) -> LocalChain:
        return LocalChain(path, **options)

    return RetryingLocalChain(call_with_retries(open_once, f"opening local chain {path}", policy), policy)


def _open_bittensor(url: str, network: str, options: dict[str, Any], policy: RetryPolicy | None) -> Chain:
    from moeforge.chain.bittensor import BittensorChain

    if not network:
        raise ConfigError(f"chain URL {url!r}: name the network after bittensor:// (finney, test, local or ws://host:port).")
    if "netuid" not in options:
        raise ConfigError(f"chain URL {url!r}: netuid is missing; add ?netuid=N (the subnet this network runs on).")
    renamed = {"wallet": "wallet", "hotkey": "hotkey", "path": "wallet_path", "finalize": "wait_for_finalization"}
    kwargs = {renamed.get(key, key): value for key, value in options.items()}
    chain = BittensorChain(network, kwargs.pop("netuid"), **kwargs)  # connects on first use
    return chain if policy is None else RetryingChain(chain, policy)


def _options(url: str, query: str, known: dict[str, Any]) -> dict[str, Any]:
    """The URL's query as typed options; an unknown key or a bad value → ConfigError naming it."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in known:
            raise ConfigError(f"chain URL {url!r}: unknown option {key!r}; this kind of chain takes {sorted(known)}.")
        kind = known[key]
        try:
            out[key] = _parse_bool(value) if kind == "bool" else kind(value)
        except ValueError:
            raise ConfigError(f"chain URL {url!r}: option {key}={value!r} is not a valid {getattr(kind, '__name__', kind)}.") from None
    return out


def _check_keywords(url: str, options: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(options.keys() - known)
    if unknown:
        raise ConfigError(f"chain URL {url!r}: option(s) {unknown} do not apply to this kind of chain; "
                          f"it takes {sorted(known)}.")


def _parse_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise ValueError(value)
