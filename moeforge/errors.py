"""The one family of exceptions moeforge raises, split by who fixes the problem.

Each message says what is wrong, where, what was expected against what is there, and what
to do next (STYLE.md §5). `cli.main()` turns these into one red line and exit status 1.
"""


class MoeforgeError(Exception):
    """Base class: a problem a user can act on."""


class ConfigError(MoeforgeError):
    """A config file, CLI flag or option value is wrong."""


class DataError(MoeforgeError):
    """Job data is missing, unreadable or malformed."""


class ModelError(MoeforgeError):
    """A model, its weights or its architecture cannot be used as asked."""


class ArtifactNotFound(MoeforgeError):
    """A file or stored artifact that should exist does not."""


class ChainError(MoeforgeError):
    """The chain rejected or could not serve a request; retrying the same request would not help."""


class ChainUnavailable(ChainError):
    """The chain cannot be reached right now (node down, connection dropped, file not there): worth retrying.

    `chain.retry.RetryingChain` retries these with backoff; every other `ChainError` is a refusal
    (an over-long commitment, an unknown hotkey, no permit) and is raised at once.
    """


class StoreError(MoeforgeError):
    """An artifact store object is corrupt, too large, or the store cannot be reached."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (its folder gone, a mount down): worth retrying, as the folder store does."""


class PayloadError(MoeforgeError):
    """An uploaded payload is malformed, unsigned, or signed by another key than it claims."""


class RoleFailed(MoeforgeError):
    """A role process of a local network exited with an error (its log says why)."""
