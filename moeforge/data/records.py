"""One training record (prompt, response, where it came from) and its canonical bytes.

The canonical bytes are what splits hash and fingerprints digest: the prompt and the
response, each length-prefixed, so that no two different records serialise the same way.
The source is left out, so the same content read from another path is the same record.
"""

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    prompt: str    # "" for plain text; the loss is masked on these tokens
    response: str  # what the model learns to produce
    source: str    # "path:line" or "path:row N", for messages that point at the input

    @property
    def text(self) -> str:
        return self.prompt + self.response

    def canonical_bytes(self) -> bytes:
        """8-byte big-endian length, then UTF-8 bytes, for the prompt and then the response."""
        parts = []
        for field in (self.prompt, self.response):
            data = field.encode("utf-8", errors="surrogatepass")
            parts.append(len(data).to_bytes(8, "big"))
            parts.append(data)
        return b"".join(parts)
