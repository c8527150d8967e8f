"""One row of job data (field name → value) into a Record, or the Problem that stops it.

A row is a JSON object, a CSV row, a Parquet row or a Hugging Face dataset row. With no field
named, `FieldChoice` detects the common shapes from a file's first row (prompt/response,
question/answer, instruction/output, a chat `messages` list, a text field) and reads every row
that way. When a field is missing, the problem lists the fields the row does have and suggests
the flag that would pick the right one, so the fix is one flag away (STYLE.md §5).
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from moeforge.data.records import Record

log = logging.getLogger(__name__)

SKIP_HINT = "Fix the record, or pass --skip-bad to skip bad records."
UTF8_HINT = "Re-save the file as UTF-8, or pass --skip-bad to skip bad records."

# Field names people use for each role, most likely first; only used to suggest a flag.
_NAMES = {
    "prompt": ("prompt", "question", "instruction", "input", "query", "problem", "context"),
    "response": ("response", "answer", "output", "completion", "target", "solution", "reply"),
    "text": ("text", "content", "body", "document", "code"),
}


# The shapes detected when no field is named, in order of preference: (prompt, response) pairs, then a chat list.
PAIRS = (
    ("prompt", "response"), ("question", "answer"), ("instruction", "output"), ("prompt", "completion"),
    ("input", "output"), ("query", "response"), ("problem", "solution"),
)
MESSAGES = "messages"  # [{"role": "user", "content": …}, …, {"role": "assistant", "content": …}]
TEXTS = ("text", "content")


@dataclass(frozen=True)
class Problem:
    reason: str  # what is wrong with this record, without its location
    hint: str    # what to do about it


class FieldChoice:
    """Which fields of a file's rows make a record: the ones named, or, when none is, the first common shape
    (PAIRS, MESSAGES, TEXTS) that the file's first row has, used for every row after it."""

    def __init__(self, prompt_field: str | None = None, response_field: str | None = None, text_field: str | None = None,
                 messages_field: str | None = None):
        named = {"prompt_field": prompt_field, "response_field": response_field, "text_field": text_field,
                 "messages_field": messages_field}
        self.fields: dict[str, str] | None = {k: v for k, v in named.items() if v is not None} or None
        self.detected = self.fields is None

    def record(self, row: Mapping[str, object], source: str) -> Record | Problem:
        if self.fields is None:
            self.fields = detect_fields(row)
            if self.fields is None:
                present = ", ".join(repr(str(key)) for key in row) if row else "no fields"
                return Problem(f"no field to read: none of prompt/response, question/answer, instruction/output, "
                               f"{MESSAGES}, text (this record has: {present})", _suggest(row, {"text": "text"}, {"text": "text"}))
            log.debug("%s: reading %s", source, self.describe())
        return row_to_record(row, source, **self.fields)

    def describe(self) -> str:
        """The fields in use, as a user would name them: "question → prompt, answer → response"."""
        return ", ".join(f"{name} → {key.removesuffix('_field')}" for key, name in (self.fields or {}).items())


def detect_fields(row: Mapping[str, object]) -> dict[str, str] | None:
    """The field arguments of `row_to_record` for the first common shape `row` has (matched case-insensitively)."""
    names = {str(key).lower(): str(key) for key in row}
    for prompt, response in PAIRS:
        if prompt in names and response in names:
            return {"prompt_field": names[prompt], "response_field": names[response]}
    if MESSAGES in names and isinstance(row[names[MESSAGES]], list):
        return {"messages_field": names[MESSAGES]}
    for text in TEXTS:
        if text in names:
            return {"text_field": names[text]}
    return None


def row_to_record(
    row: Mapping[str, object],
    source: str,
    *,
    prompt_field: str | None = None,
    response_field: str | None = None,
    text_field: str | None = None,
    messages_field: str | None = None,
) -> Record | Problem:
    """Prompt and response fields when both are named, a chat list, else the one text field (prompt "")."""
    if messages_field is not None:
        return _chat_record(row, source, messages_field)
    if prompt_field is not None and response_field is not None:
        wanted = {"prompt": prompt_field, "response": response_field}
    elif text_field is not None:
        wanted = {"text": text_field}
    else:  # DataSpec rejects this; the check keeps a direct caller honest
        raise ValueError("name both prompt_field and response_field, messages_field, or text_field")

    missing = {role: name for role, name in wanted.items() if name not in row}
    if missing:
        return _missing(row, missing, wanted)
    values: dict[str, str] = {}
    for role, name in wanted.items():
        value = row[name]
        if not isinstance(value, str):
            return Problem(f"field {name!r} is {describe(value)}, expected a string", SKIP_HINT)
        bad = undecodable_at(value)
        if bad is not None:
            return Problem(f"field {name!r} has bytes that are not valid UTF-8 ({bad})", UTF8_HINT)
        values[role] = value

    if "text" in values:
        return Record(prompt="", response=values["text"], source=source)
    if not values["response"].strip():
        return Problem(f"field {response_field!r} is empty; a record needs a response to learn from", SKIP_HINT)
    return Record(prompt=values["prompt"], response=values["response"], source=source)


def _chat_record(row: Mapping[str, object], source: str, field: str) -> Record | Problem:
    """A chat: the last message (the assistant's) is the response; the earlier contents, one per paragraph, the prompt."""
    if field not in row:
        return _missing(row, {"messages": field}, {"messages": field})
    messages = row[field]
    if not isinstance(messages, list) or not messages:
        return Problem(f"field {field!r} is {describe(messages)}, expected a list of {{role, content}} messages", SKIP_HINT)
    for i, message in enumerate(messages):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            return Problem(f"{field}[{i}] is {describe(message)}, expected an object with string 'role' and 'content'", SKIP_HINT)
        bad = undecodable_at(message["content"])
        if bad is not None:
            return Problem(f"{field}[{i}] has bytes that are not valid UTF-8 ({bad})", UTF8_HINT)
    last = messages[-1]
    if last["role"] != "assistant" or not last["content"].strip():
        return Problem(f"the last of {field} is a {last['role']!r} message; a record needs an assistant reply to learn",
                       SKIP_HINT)
    prompt = "\n\n".join(m["content"] for m in messages[:-1])
    return Record(prompt=prompt, response=last["content"], source=source)


def undecodable_at(text: str) -> str | None:
    """Where text decoded with errors="surrogateescape" holds a byte that was not UTF-8."""
    for column, char in enumerate(text, start=1):
        if "\udc80" <= char <= "\udcff":
            return f"byte 0x{ord(char) - 0xDC00:02x} at column {column}"
    return None


def _missing(row: Mapping[str, object], missing: dict[str, str], wanted: dict[str, str]) -> Problem:
    names = ", ".join(repr(name) for name in missing.values())
    verb = "is" if len(missing) == 1 else "are"
    noun = "field" if len(missing) == 1 else "fields"
    present = ", ".join(repr(str(key)) for key in row) if row else "no fields"
    reason = f"{noun} {names} {verb} missing (this record has: {present})"
    return Problem(reason, _suggest(row, missing, wanted))


def _suggest(row: Mapping[str, object], missing: dict[str, str], wanted: dict[str, str]) -> str:
    """The flags that would pick fields this row has, when there is a clear choice."""
    taken = {name for role, name in wanted.items() if role not in missing}
    candidates = [str(key) for key, value in row.items() if isinstance(value, str) and key not in taken]
    if "text" in missing:  # the default text field is absent: maybe the data is prompt/response
        prompt, response = _pick(candidates, "prompt"), _pick(candidates, "response")
        if prompt and response and prompt != response:
            return f"Pass --prompt-field {prompt} --response-field {response}, or fix the record."
        flags = {"text": _pick(candidates, "text") or _only(candidates)}
    else:
        flags = {}
        for role in missing:
            pick = _pick(candidates, role) or _only(candidates)
            flags[role] = pick
            if pick:
                candidates.remove(pick)
    if all(flags.values()):
        given = " ".join(f"--{role}-field {name}" for role, name in flags.items())
        return f"Pass {given}, or fix the record."
    roles = " / ".join(f"--{role}-field" for role in missing)
    choices = ", ".join(repr(name) for name in candidates) or "none of its fields are strings"
    return f"Pass {roles} naming one of this record's string fields ({choices}), or fix the record."


def _pick(candidates: list[str], role: str) -> str | None:
    lowered = {name.lower(): name for name in candidates}
    return next((lowered[name] for name in _NAMES[role] if name in lowered), None)


def _only(candidates: list[str]) -> str | None:
    return candidates[0] if len(candidates) == 1 else None


def describe(value: object) -> str:
    """A short description of a non-string value for a message: "a number (42)", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, str):
        return "a string"
    preview = repr(value)
    return f"{type(value).__name__} ({preview[:40]}{'…' if len(preview) > 40 else ''})"
