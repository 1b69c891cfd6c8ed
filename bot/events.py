"""The event: what a source saw, in a stable JSON wire form.

On the stream an entry has one field, ``event``, holding the JSON of an ``Event``. The JSON
carries ``schema`` (the wire version); a reader refuses versions it does not know rather than
guessing, and the worker moves such entries to the dead-letter stream with the reason.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, ValidationError

SCHEMA_VERSION: Final = 1
TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"
SITE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_WIRE_BYTES = 256 * 1024  # an entry above this is refused unread (worker.max_entry_bytes)
MAX_DEPTH = 32  # JSON nested deeper than this is refused unparsed (worker.max_entry_depth)


class EventError(ValueError):
    """An entry that cannot be read as an event; the message is the dead-letter reason."""


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(SCHEMA_VERSION, alias="schema")
    id: str = Field(min_length=1, max_length=64)
    type: str = Field(pattern=TYPE_PATTERN, max_length=64)
    site: str = Field(pattern=SITE_PATTERN)
    source: str = Field(min_length=1, max_length=64)
    occurred_at: AwareDatetime
    data: dict[str, JsonValue] = {}
    idempotency_key: str = Field(min_length=1, max_length=256)

    @classmethod
    def new(
        cls,
        type: str,
        site: str,
        *,
        source: str,
        data: dict[str, JsonValue] | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Event:
        """Build an event; the default key makes identical observations collapse into one run."""
        payload = data or {}
        return cls(
            id=uuid.uuid4().hex,
            type=type,
            site=site,
            source=source,
            occurred_at=occurred_at or datetime.now(UTC),
            data=payload,
            idempotency_key=idempotency_key or default_key(type, site, payload),
        )

    def to_wire(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_wire(
        cls,
        raw: bytes | str | None,
        *,
        max_bytes: int = MAX_WIRE_BYTES,
        max_depth: int = MAX_DEPTH,
    ) -> Event:
        """Read an entry; every failure is an ``EventError`` (permanent: a dead letter at once,
        never a retry). Size and nesting are checked before parsing, in linear time."""
        if raw is None:
            raise EventError("entry has no 'event' field")
        if len(raw) > max_bytes:
            raise EventError(f"event is {len(raw)} bytes; the limit is {max_bytes}")
        depth = nesting(raw)
        if depth > max_depth:
            raise EventError(f"event JSON is nested {depth} deep; the limit is {max_depth}")
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise EventError(f"event is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise EventError("event JSON must be an object")
        version = doc.get("schema")
        if version != SCHEMA_VERSION:
            raise EventError(f"unsupported event schema {version!r}; this worker reads 1")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise EventError(describe(exc)) from None


def nesting(raw: bytes | str) -> int:
    """How deep JSON objects/arrays nest in ``raw`` (brackets inside strings do not count);
    one pass, no recursion, whatever the input."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def default_key(type: str, site: str, data: dict[str, JsonValue]) -> str:
    """``type:site:<digest of data>``: the same observation twice is one piece of work."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return f"{type}:{site}:{digest}"


def describe(exc: ValidationError) -> str:
    """Pydantic errors as one line: ``field: problem; field: problem``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid event: " + "; ".join(parts)


def parse_data(raw: str | None) -> dict[str, Any]:
    """``--data`` of the CLI: a JSON object or nothing."""
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("--data must be a JSON object")
    return value
