"""Keeping secrets out of everything we write: logs, history, journals, dead letters, chat, errors.

One :class:`Redactor` per process (``Services.redact``, which the logs use too; code handed no
``Services``, like the device drivers, reaches it with :func:`process_redactor`). It masks, in
time linear in the length of the text:

* **Known secrets, exactly** (the guarantee): every configured secret and every secret learnt at
  run time (:meth:`Redactor.add`, e.g. a connection's shared key), in the forms a secret takes on
  its way into text:

  - as is;
  - percent-encoded, the way ``urllib.parse.quote`` (``safe=""``, ``"/"`` and the characters a
    URL or query lets through) and ``quote_plus`` write it, with upper- or lower-case hex;
  - base64 of the secret alone, and of every ``user:secret`` (HTTP Basic) -- exactly for the
    ``(username, secret)`` pairs we are told about, and, whatever the user name, the part of
    the base64 that only depends on the secret (all but its first one or two characters);
    standard and URL-safe alphabets, with or without the ``=`` padding;
  - JSON-escaped (``json.dumps(secret)[1:-1]``, ASCII and not, and escaped twice: a JSON
    document quoted inside a JSON log line) and Python-``repr``-escaped.

  Secrets shorter than 4 characters (or blank) are ignored: they would mask half of every text.

* **Secret shapes we were not told about** (best effort): credentials in URLs
  (``scheme://user:PASSWORD@``), ``Authorization:`` header values (``Basic``, ``Bearer``,
  ``SharedKey``... whatever the length), ``Bearer <token>``, and ``key=value`` / ``"key": "value"``
  pairs whose key names a secret (``password``, ``passwd``, ``pwd``, ``secret``, ``token``,
  ``shared_key``/``sharedKey``, ``sig``, ``api_key``/``apikey``, ``key``, and prefixed forms such
  as ``client_secret``, ``access_token``, ``x-api-key``). The key, scheme or header name is kept:
  ``password=***``. Values are masked whatever their length, except URL passwords (up to 4096
  characters). Shapes are a safety net; the exact secrets are the guarantee.

Everything is masked with ``***`` (``mask=`` chooses another text: chat says ``[REDACTED]``);
overlapping or adjacent finds become one mask. :meth:`Redactor.tree` also redacts dict keys.

How it stays linear. The known secrets' forms are compiled into one regular expression shaped
as a trie (``ab(?:c|d(?:e)?)``): at any position of the text at most one branch can go on, so
a match attempt costs at most the length of the longest partial match there, however many
secrets there are (the first character picks the branch among at most an alphabet's worth):
O(n * d) for n characters, d the longest partial match, which for text that does not contain
long pieces of a secret is one or two characters. Every position where some form starts is
found (each search resumes one past the previous start), the longest form there is taken, and
overlapping finds are merged, so a secret containing or overlapping another is masked whole.
The shape patterns never backtrack: each starts with a literal or a token boundary (``re``
then skips ahead at string-search speed), uses bounded or possessive quantifiers and no nested
repetition, so an attempt fails after a bounded number of characters or consumes what it read.
1 MiB of log-like text with 50 secrets takes about 0.1-0.2 s (``bench/redaction.py``; the
pattern this replaced took 8.6 s for 32 kB of letters). Adding a secret only marks the
expression stale; it is rebuilt (some tens of milliseconds for hundreds of forms) the next time
text is redacted.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_SECRET_LENGTH", "Redactor", "process_redactor", "use_process_redactor"]

MASK = "***"
MIN_SECRET_LENGTH = 4

# ``safe`` sets for percent-encoding: everything encoded; the default of ``quote``; and what a
# URL path or query value may carry unencoded (RFC 3986 sub-delimiters, ':', '@', '/', '?'),
# which is what lenient URL builders (yarl, requests) leave alone.
_SAFE_SETS = ("", "/", ":@/", "!$'()*,;:@/?")
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")
# Base64 of a secret's tail shorter than this many bytes is not registered on its own.
_MIN_TAIL_BYTES = 6
# Trie nesting deeper than this (long chains of secrets that are prefixes of one another) is
# emitted as a flat longest-first alternation, which ``re`` parses without deep recursion.
_MAX_NESTING = 48

_QUOTE = r"(?:\\?[\"'])?"  # an optional quote, possibly JSON-escaped
_SEPARATOR = _QUOTE + r"[ \t]{0,16}+[=:][ \t]{0,16}+" + _QUOTE
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}

# Shapes of secrets we may not have been told about. Each pattern starts with a literal, so
# ``re`` skips to candidates at string-search speed; all but Bearer run on an ASCII-lowercased
# copy of the text (same length, so positions carry over). Group ``keep`` ends where the mask
# starts.
# Authorization: <scheme> <credentials>, whatever their length.
_AUTH = re.compile(
    r"authorization(?<![a-z0-9]authorization)"
    + _SEPARATOR
    + r"(?:[a-z][a-z0-9_-]{0,31}+[ \t]{1,16}+)?(?P<keep>)[^\s\"'\\,;]++"
)
# Bearer <token> anywhere; case-sensitive, since "the bearer of" is prose.
_BEARER = re.compile(r"Bearer(?<![A-Za-z0-9_]Bearer)[ \t]{1,16}+(?P<keep>)[A-Za-z0-9._~+/=-]++")
# password=..., "token": "...", client_secret=..., x-api-key: ... The name must not follow a
# letter or digit ("mytoken"); the short, common names not even "_" or "-" ("idempotency_key").
_PREFIXABLE = ["password", "passwd", "secret", "token"] + [
    base + sep + "key"
    for base in ("api", "shared", "access", "account", "secret", "private", "storage", "client")
    for sep in ("", "_", "-")
]
_BARE = ["pwd", "sig", "key"]
# scheme://user:PASSWORD@ -- the scheme must start a token (no letter, digit, '+', '.' or '-'
# before it), so a long run of letters is tried once, not once per letter.
_URL = re.compile(
    r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,31}+://[^\s:/?#@]{0,256}+:"
    r"(?P<keep>)[^\s/?#@]{1,4096}+(?=@)"
)


def _lower_hex(text: str) -> str:
    return _HEX_ESCAPE.sub(lambda m: m[0].lower(), text)


def _base64_forms(data: bytes) -> set[str]:
    out: set[str] = set()
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        text = encoded.decode("ascii")
        out.add(text)
        out.add(text.rstrip("="))
        # Only the complete 3-byte groups: what appears when more data follows the secret.
        out.add(text[: len(data) // 3 * 4])
    return out


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` shows up in text (itself included)."""
    forms = {secret}
    for safe in _SAFE_SETS:
        for encoded in (quote(secret, safe=safe), quote_plus(secret, safe=safe)):
            forms.add(encoded)
            forms.add(_lower_hex(encoded))
    escaped = json.dumps(secret)[1:-1]
    forms.add(escaped)
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(json.dumps(escaped)[1:-1])
    forms.add(repr(secret)[1:-1])
    data = secret.encode("utf-8")
    # base64(anything + secret): once the prefix fills its last 3-byte group, the rest of the
    # encoding only depends on the secret. The prefix length decides which of the first bytes
    # share a group with it, so register the encodings of the secret minus 0, 1 and 2 bytes.
    for skip in range(3):
        tail = data[skip:]
        if skip == 0 or len(tail) >= _MIN_TAIL_BYTES:
            forms |= _base64_forms(tail)
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def _pair_forms(username: str, secret: str) -> set[str]:
    """HTTP Basic credentials of ``username``: base64 of ``username:secret``."""
    return {f for f in _base64_forms(f"{username}:{secret}".encode()) if len(f) >= 8}


def _usable(secret: object) -> bool:
    return isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH and bool(secret.strip())


def _trie_pattern(words: Iterable[str]) -> str:
    """One regular expression matching exactly ``words``, the longest first, as a trie."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True  # a word ends here
    return _emit(root, 0)


def _emit(node: dict[str, Any], depth: int) -> str:
    if depth >= _MAX_NESTING:
        rest = sorted(_suffixes(node), key=len, reverse=True)
        body = "|".join(re.escape(s) for s in rest if s)
        return f"(?:{body})" + ("?" if "" in rest else "") if body else ""
    branches: list[str] = []
    for ch, child in node.items():
        if not ch:
            continue
        chain = ch
        # Follow single-child, non-terminal nodes: ``abc`` instead of ``a(?:b(?:c))``.
        while "" not in child and len(child) == 1:
            (nxt, grandchild), *_ = child.items()
            chain += nxt
            child = grandchild
        branches.append(re.escape(chain) + _emit(child, depth + 1))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a word may also end here: try the longer ones first (greedy ``?``)
        body = (body if len(branches) > 1 else f"(?:{body})") + "?"
    return body


def _suffixes(node: dict[str, Any]) -> list[str]:
    out: list[str] = []
    stack: list[tuple[str, dict[str, Any]]] = [("", node)]
    while stack:
        prefix, current = stack.pop()
        for ch, child in current.items():
            if ch:
                stack.append((prefix + ch, child))
            else:
                out.append(prefix)
    return out


def _names_pattern() -> str:
    """The secret names of ``_PAIR`` as a trie per first letter, with the boundary rules.

    Each branch starts with its literal first letter (so ``re`` can skip ahead) and checks
    the character before it with a fixed-width look-behind.
    """
    branches = []
    for first in sorted({name[0] for name in _PREFIXABLE}):
        rest = _trie_pattern(name[1:] for name in _PREFIXABLE if name[0] == first)
        branches.append(f"{first}(?<![a-z0-9]{first}){rest}")
    branches += (f"{name}(?<![a-z0-9_-]{name})" for name in _BARE)
    return "|".join(branches)


_PAIR = re.compile(f"(?:{_names_pattern()})" + _SEPARATOR + r"(?P<keep>)[^\s\"'\\&,;}]++")


class Redactor:
    """Masks known secrets (in their usual encodings) and secret-shaped text with ``***``.

    ``secrets`` are the values never to let through; ``pairs`` are ``(username, secret)``
    credentials whose HTTP Basic form (base64 of ``username:secret``) is masked too. Both can
    grow at run time with :meth:`add`. Safe to share between the event loop and threads.
    """

    MASK = MASK

    def __init__(
        self, secrets: Iterable[str] = (), *, pairs: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, None] = {}
        self._forms: set[str] = set()
        self._exact: re.Pattern[str] | None = None
        self._stale = False
        for secret in secrets:
            self.add(secret)
        for username, secret in pairs:
            self.add(secret, username=username)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The registered secrets (not their encodings), in registration order."""
        return tuple(self._secrets)

    def add(self, secret: str, *, username: str | None = None) -> None:
        """Mask ``secret`` (and, with ``username``, its Basic credentials) from now on.

        Cheap: the matcher is rebuilt the next time text is redacted. Secrets shorter than
        four characters or blank are ignored.
        """
        if not _usable(secret):
            return
        forms = _forms(secret)
        if username:
            forms |= _pair_forms(username, secret)
        with self._lock:
            self._secrets.setdefault(secret, None)
            if not forms <= self._forms:
                self._forms |= forms
                self._stale = True

    def _matcher(self) -> re.Pattern[str] | None:
        if self._stale:
            with self._lock:
                if self._stale:
                    pattern = _trie_pattern(sorted(self._forms))
                    self._exact = re.compile(pattern) if pattern else None
                    self._stale = False
        return self._exact

    def __call__(self, text: str, *, mask: str = MASK) -> str:
        """``text`` with every known secret and secret shape replaced by ``mask``.

        Overlapping or adjacent finds become one ``mask``.
        """
        if not text:
            return text
        spans: list[tuple[int, int]] = []
        exact = self._matcher()
        if exact is not None:
            _exact_spans(exact, text, spans)
        _shape_spans(text, spans)
        return _masked(text, spans, mask) if spans else text

    def tree(self, value: Any, *, mask: str = MASK) -> Any:
        """The same JSON-like structure with every string redacted, dict keys included.

        Keys are redacted because they can be data too (a fact labelled with a secret); two
        keys that redact to the same text are kept apart with a ``#2``, ``#3``... suffix.
        Tuples come back as lists (JSON has arrays only); other values are returned as they
        are. Walks without recursion, so deeply nested input cannot exhaust the stack; a
        container that contains itself raises ``ValueError``, like ``json.dumps``.
        """
        if isinstance(value, str):
            return self(value, mask=mask)
        if not isinstance(value, dict | list | tuple):
            return value
        holder: list[Any] = [None]
        # (source, where to put the copy, key or index there); None source = leave container
        stack: list[tuple[Any, Any, Any]] = [(value, holder, 0)]
        active: set[int] = set()
        while stack:
            source, target, slot = stack.pop()
            if source is None and target is None:
                active.discard(slot)
                continue
            if isinstance(source, str):
                target[slot] = self(source, mask=mask)
                continue
            if not isinstance(source, dict | list | tuple):
                target[slot] = source
                continue
            if id(source) in active:
                raise ValueError("circular reference in a structure to redact")
            active.add(id(source))
            stack.append((None, None, id(source)))
            if isinstance(source, dict):
                copy: dict[Any, Any] = {}
                for key, item in source.items():
                    new_key = self(key, mask=mask) if isinstance(key, str) else key
                    if new_key in copy:
                        n = 2
                        while f"{new_key}#{n}" in copy:
                            n += 1
                        new_key = f"{new_key}#{n}"
                    copy[new_key] = None
                    stack.append((item, copy, new_key))
                target[slot] = copy
            else:
                items: list[Any] = [None] * len(source)
                stack.extend((item, items, i) for i, item in enumerate(source))
                target[slot] = items
        return holder[0]


def _exact_spans(exact: re.Pattern[str], text: str, spans: list[tuple[int, int]]) -> None:
    """Where the known forms are: the longest one at every position where one starts.

    Searching again from one past each start (not from its end) finds the forms that start
    inside another one, so overlapping secrets are all masked. Each search scans from the
    previous start to the next, so the text is scanned about once.
    """
    match = exact.search(text)
    while match is not None:
        start = match.start()
        spans.append((start, match.end()))
        match = exact.search(text, start + 1)


def _shape_spans(text: str, spans: list[tuple[int, int]]) -> None:
    """Where secret-shaped values are (the part to mask, after the name that is kept)."""
    low = text.lower()
    if len(low) != len(text):  # a few characters lower-case to two ("İ"): keep positions
        low = text.translate(_ASCII_LOWER)
    spans.extend((m.start("keep"), m.end()) for m in _AUTH.finditer(low))
    spans.extend((m.start("keep"), m.end()) for m in _BEARER.finditer(text))
    spans.extend((m.start("keep"), m.end()) for m in _PAIR.finditer(low))
    if "://" in low:
        spans.extend((m.start("keep"), m.end()) for m in _URL.finditer(low))


def _masked(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    """``text`` with the union of ``spans`` replaced, one ``mask`` per run of overlapping spans."""
    spans.sort()
    pieces: list[str] = []
    done = 0  # text[:done] is handled
    start, end = spans[0]
    for at, until in spans[1:]:
        if at <= end:  # overlaps or touches the current run
            end = max(end, until)
            continue
        pieces += (text[done:start], mask)
        done = end
        start, end = at, until
    pieces += (text[done:start], mask, text[end:])
    return "".join(pieces)


_process: Redactor | None = None
_process_lock = threading.Lock()


def use_process_redactor(redact: Redactor) -> Redactor:
    """Make ``redact`` the process's one redactor (``bot.app.open_services`` installs the
    services' one, which the logs use too), for code that is handed no ``Services``."""
    global _process
    with _process_lock:
        _process = redact
    return redact


def process_redactor() -> Redactor:
    """The process's one redactor; an empty one is installed if nothing installed one yet
    (a driver used on its own), so everything registered lands in the same instance."""
    global _process
    with _process_lock:
        if _process is None:
            _process = Redactor()
        return _process
