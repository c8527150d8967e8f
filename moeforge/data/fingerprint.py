"""A digest of a record sequence's content, for provenance: same records in order → same hex.

sha256 over a versioned header, then each record's canonical bytes (length-prefixed prompt
and response). The source path is left out, so copying the data elsewhere keeps its fingerprint.
"""

import hashlib
import logging
from collections.abc import Iterable

from moeforge.data.records import Record

log = logging.getLogger(__name__)

_HEADER = b"moeforge.records.v1\n"  # bump if the serialisation ever changes


def fingerprint_records(records: Iterable[Record]) -> str:
    """Hex sha256 of the records' prompts and responses, in order."""
    digest = hashlib.sha256(_HEADER)
    for record in records:
        digest.update(record.canonical_bytes())
    return digest.hexdigest()
