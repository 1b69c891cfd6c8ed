"""Redaction: the process's one redactor on 1 MB of log-like text, beside the pattern it replaced.

    python bench/redaction.py            # full: best of 5
    python bench/redaction.py --quick    # best of 2

``redact_1mb_s`` is the best wall time of ``Redactor.__call__`` on 1 MiB of words, JSON
fragments, URLs, ``key=value`` pairs and runs of letters with the 50 registered secrets (10 of
them also as ``user:secret`` Basic credentials) sprinkled in; the matcher is built beforehand.
``old_regex_32kb_s`` is the "before" peer: the secret-shape pattern the previous
``bot/redact.py`` ran on every log line, on 32 KiB of one run of letters (what a request line
like ``GET /nic/update?q=AAAA...`` carries), measured once -- it is quadratic there.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.redact import Redactor

SECRETS = 50
PAIRS = 10
SIZE = 1 << 20
OLD_SIZE = 32 << 10

# The "before" peer, copied verbatim from bot/redact.py as it was.
OLD_SHAPES = re.compile(
    r"(?P<url>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?=@)"
    r"|(?P<bearer>\bBearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<pair>\b(?:password|passwd|pwd|secret|token|shared_?key|sharedKey|sig|api_?key)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;}]+",
    re.I,
)


def _old_keep(match: re.Match[str]) -> str:
    return (match.group("url") or match.group("bearer") or match.group("pair")) + "***"


def secrets(n: int = SECRETS) -> list[str]:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "+/=@:%-_!"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(16, 48))) for _ in range(n)]


def log_text(size: int, known: list[str]) -> str:
    """Log-like text with the secrets now and then (about one word in 500)."""
    rng = random.Random(size)
    words = ["".join(rng.choice(string.ascii_letters) for _ in range(8)) for _ in range(3000)]
    words += [
        '"site": "hq",',
        "status=200",
        "https://example.com/a?b=c",
        "idempotency_key=ip.changed:hq",
        "A" * 64,
        "a1" * 32,
    ]
    out: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(known) if rng.random() < 0.002 else rng.choice(words)
        out.append(word)
        total += len(word) + 1
    return " ".join(out)[:size]


def _best(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def run(quick: bool) -> dict[str, Any]:
    known = secrets()
    redact = Redactor(known, pairs=[(f"user{i}", s) for i, s in enumerate(known[:PAIRS])])
    redact("build the matcher before timing")
    text = log_text(SIZE, known)
    masked = redact(text)
    leaked = [s for s in known if s in masked]
    if leaked:
        raise RuntimeError(f"{len(leaked)} secret(s) survived redaction")
    elapsed = _best(2 if quick else 5, lambda: redact(text))
    old_size = OLD_SIZE // 4 if quick else OLD_SIZE  # quadratic: 8 KiB keeps --quick short
    attack = "A" * old_size
    old = _best(1, lambda: OLD_SHAPES.sub(_old_keep, attack))
    new = _best(3, lambda: redact(attack))
    return {
        "redact_1mb_s": round(elapsed, 4),
        "secrets": len(redact.secrets),
        "bytes": len(text.encode()),
        "attack_bytes": old_size,
        "old_regex_attack_s": round(old, 3),
        "new_attack_s": round(new, 5),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
