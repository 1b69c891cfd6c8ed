"""The process's one redactor: known secrets in every encoding, secret shapes, linear time."""

from __future__ import annotations

import base64
import json
import random
import string
import threading
import time
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from bot.redact import MASK, Redactor

SECRET = "p@ss/w0rd+x y&z=ü"
USER = "router-hq"


def b64(text: str, *, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(text.encode()).decode()


def lower_hex(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        if text[i] == "%":
            out.append(text[i : i + 3].lower())
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "percent": lambda s: quote(s, safe=""),
    "percent-lower": lambda s: lower_hex(quote(s, safe="")),
    "percent-default-safe": quote,
    "percent-lower-default-safe": lambda s: lower_hex(quote(s)),
    "quote_plus": quote_plus,
    "quote_plus-lower": lambda s: lower_hex(quote_plus(s)),
    "query-lenient": lambda s: quote(s, safe="!$'()*,;:@/?"),
    "base64": b64,
    "base64-unpadded": lambda s: b64(s).rstrip("="),
    "base64-urlsafe": lambda s: b64(s, urlsafe=True),
    "base64-user-secret": lambda s: b64(f"{USER}:{s}"),
    "base64-user-secret-unpadded": lambda s: b64(f"{USER}:{s}").rstrip("="),
    "json": lambda s: json.dumps(s)[1:-1],
    "json-unicode": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json-twice": lambda s: json.dumps(json.dumps(s)[1:-1])[1:-1],
    "repr": lambda s: repr(s)[1:-1],
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_each_encoding_is_masked_and_nothing_else_changes(encoding: str) -> None:
    redact = Redactor([SECRET], pairs=[(USER, SECRET)])
    encoded = ENCODINGS[encoding](SECRET)
    text = f"before <{encoded}> after"
    assert redact(text) == f"before <{MASK}> after"


@pytest.mark.parametrize("secret", ["hunter2hunter2", "Zm9v", "a b c d", "ключ-секрет", 'q"uo\\te'])
def test_encodings_of_other_secrets(secret: str) -> None:
    redact = Redactor([secret], pairs=[("admin", secret)])
    for name, encode in ENCODINGS.items():
        encoded = b64(f"admin:{secret}") if name.startswith("base64-user") else encode(secret)
        assert redact(f"[{encoded}]") == f"[{MASK}]", name


@pytest.mark.parametrize("user", ["a", "ab", "abc", "abcd", "bob@example.com", "ü"])
def test_basic_credentials_of_an_unknown_user_leave_at_most_two_characters(user: str) -> None:
    secret = "correct-horse-battery"
    redact = Redactor([secret])  # no pair: the user name is not known
    encoded = b64(f"{user}:{secret}")
    out = redact(f"creds {encoded} end")
    assert out.startswith("creds ") and out.endswith(f"{MASK} end")
    visible = out.removeprefix("creds ").removesuffix(f"{MASK} end")
    assert len(visible) % 4 == 0
    decoded = base64.b64decode(visible)
    assert decoded.startswith(f"{user}:".encode())
    assert len(decoded) <= len(f"{user}:".encode()) + 2


@pytest.mark.parametrize("size", [10, 5_000, 100_000])
def test_authorization_header_is_masked_whatever_its_length(size: int) -> None:
    redact = Redactor()
    creds = b64("someone:" + "x" * size)
    for line, masked in [
        (f"Authorization: Basic {creds}", f"Authorization: Basic {MASK}"),
        (
            f"proxy-authorization:basic {creds}\r\nHost: a",
            f"proxy-authorization:basic {MASK}\r\nHost: a",
        ),
        (f"{{'Authorization': 'Basic {creds}'}}", f"{{'Authorization': 'Basic {MASK}'}}"),
        (
            f'{{\\"authorization\\": \\"Basic {creds}\\"}}',
            f'{{\\"authorization\\": \\"Basic {MASK}\\"}}',
        ),
        (f"Authorization: Bearer {creds}", f"Authorization: Bearer {MASK}"),
        (f"Authorization: {creds}", f"Authorization: {MASK}"),
    ]:
        assert redact(line) == masked


def test_known_basic_credentials_are_masked_without_a_header_name() -> None:
    redact = Redactor(pairs=[("bob", "hunter22")])
    assert redact(f"got {b64('bob:hunter22')}!") == f"got {MASK}!"
    assert redact("hunter22") == MASK  # a pair's secret is a secret


def test_a_secret_added_at_run_time_is_masked_afterwards() -> None:
    redact = Redactor(["configured-1"])
    text = "shared key S3cr3t-Shared-Key in an ARM error, configured-1"
    assert redact(text) == f"shared key S3cr3t-Shared-Key in an ARM error, {MASK}"
    redact.add("S3cr3t-Shared-Key")
    assert redact(text) == f"shared key {MASK} in an ARM error, {MASK}"
    assert redact(quote("S3cr3t-Shared-Key") + "%") == f"{MASK}%"
    redact.add("S3cr3t-Shared-Key")  # again: a no-op
    redact.add("Shared-Pass", username="bob")
    assert redact(b64("bob:Shared-Pass")) == MASK
    assert redact.secrets == ("configured-1", "S3cr3t-Shared-Key", "Shared-Pass")


def test_adding_from_threads_while_redacting() -> None:
    redact = Redactor()
    secrets = [f"thread-secret-{i:04d}" for i in range(40)]
    errors: list[BaseException] = []

    def adder(chunk: list[str]) -> None:
        try:
            for secret in chunk:
                redact.add(secret)
                redact(f"x {secret} y")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=adder, args=(secrets[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert redact("".join(secrets)) == MASK  # adjacent finds merge into one mask
    assert redact(" | ".join(secrets)) == " | ".join([MASK] * len(secrets))


def test_overlapping_secrets_are_masked_whole() -> None:
    redact = Redactor(["abcdef123456", "123456ghijkl", "wxyz", "uvwxyz00"])
    assert redact("1 abcdef123456ghijkl 2") == f"1 {MASK} 2"  # overlap
    assert redact("3 abcdef123456 4") == f"3 {MASK} 4"
    assert redact("5 uvwxyz00 6 wxyz 7") == f"5 {MASK} 6 {MASK} 7"  # one contains another
    assert redact("8 uvwxyz0 9") == f"8 uv{MASK}0 9"


def test_hundreds_of_secrets_that_are_prefixes_of_one_another() -> None:
    """A deep trie is emitted flat past some depth: no RecursionError, still longest first."""
    redact = Redactor(["k" * n for n in range(4, 400)])
    assert redact("<" + "k" * 500 + ">") == f"<{MASK}>"
    assert redact("<kkk>") == "<kkk>"


def test_short_and_blank_secrets_are_ignored() -> None:
    redact = Redactor(["abc", "", "    ", "\t\t\t\t", "abcd"])
    assert redact.secrets == ("abcd",)
    assert redact("abc abcd    x") == f"abc {MASK}    x"


def test_text_without_secrets_is_returned_unchanged() -> None:
    redact = Redactor(["some-secret-value"])
    text = 'GET /nic/update?hostname=hq&myip=203.0.113.9 "ok" idempotency_key=abc İstanbul'
    assert redact(text) == text
    assert redact("") == ""


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://bot:s3cret@127.0.0.1:6379/0", "redis://bot:***@127.0.0.1:6379/0"),
        ("HTTPS://:tok@host/x", "HTTPS://:***@host/x"),
        ("see https://host:443/path?a=b@c", "see https://host:443/path?a=b@c"),
        ("Bearer eyJhbGciOi.x.y-z and more", "Bearer *** and more"),
        ("the bearer of bad news", "the bearer of bad news"),
        ("password=hunter2&user=bob", "password=***&user=bob"),
        ('{"password": "hunter2", "user": "bob"}', '{"password": "***", "user": "bob"}'),
        ('{\\"sharedKey\\": \\"abc\\"}', '{\\"sharedKey\\": \\"***\\"}'),
        ("shared_key: abc, next", "shared_key: ***, next"),
        (
            "PASSWD=a PWD=b secret=c TOKEN=d sig=e api_key=f apikey=g key=h",
            "PASSWD=*** PWD=*** secret=*** TOKEN=*** sig=*** api_key=*** apikey=*** key=***",
        ),
        (
            "client_secret=a access_token=b x-api-key: c account-key=d",
            "client_secret=*** access_token=*** x-api-key: *** account-key=***",
        ),
        ("idempotency_key=abc mytoken=x keyword=y", "idempotency_key=abc mytoken=x keyword=y"),
        ("?sv=2022&sig=Zm9vYmFy%3D&se=1", "?sv=2022&sig=***&se=1"),
    ],
)
def test_secret_shapes(text: str, masked: str) -> None:
    assert Redactor()(text) == masked


def test_mask_can_be_chosen_per_call() -> None:
    redact = Redactor(["hunter22hunter22"])
    assert redact("x hunter22hunter22 token=a", mask="[REDACTED]") == (
        "x [REDACTED] token=[REDACTED]"
    )
    assert redact.tree({"a": "hunter22hunter22"}, mask="#") == {"a": "#"}


def test_tree_redacts_keys_and_values() -> None:
    redact = Redactor(["s3cret-value"])
    value = {
        "s3cret-value": ["x s3cret-value", {"k": ("s3cret-value", 5)}],
        "***": "kept apart",
        "n": 5,
        "none": None,
        "f": 1.5,
        "b": True,
        7: "int key s3cret-value",
    }
    assert redact.tree(value) == {
        MASK: [f"x {MASK}", {"k": [MASK, 5]}],
        f"{MASK}#2": "kept apart",
        "n": 5,
        "none": None,
        "f": 1.5,
        "b": True,
        7: f"int key {MASK}",
    }
    assert redact.tree("s3cret-value") == MASK
    assert redact.tree(42) == 42
    assert value["s3cret-value"] == ["x s3cret-value", {"k": ("s3cret-value", 5)}]  # untouched


def test_tree_handles_deep_nesting_and_refuses_cycles() -> None:
    redact = Redactor(["s3cret-value"])
    deep: list[object] = ["s3cret-value"]
    for _ in range(50_000):
        deep = [deep]
    out = redact.tree(deep)
    for _ in range(50_000):
        out = out[0]
    assert out == [MASK]
    shared = {"a": "s3cret-value"}
    assert redact.tree([shared, shared]) == [{"a": MASK}, {"a": MASK}]
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="circular"):
        redact.tree(loop)


# ------------------------------------------------------------------------------ linear time


def _secrets(n: int) -> list[str]:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "+/=@:%-_!"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(16, 48))) for _ in range(n)]


def _text(size: int, secrets: list[str]) -> str:
    """Log-like text: words, key=value pairs, URLs, JSON, and the secrets now and then."""
    rng = random.Random(size)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 10)))]
    words += ["".join(rng.choice(string.ascii_letters) for _ in range(8)) for _ in range(3000)]
    words += ['"site": "hq",', "status=200", "https://example.com/a?b=c", "A" * 64, "a1" * 32]
    out: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(secrets) if rng.random() < 0.002 else rng.choice(words)
        out.append(word)
        total += len(word) + 1
    return " ".join(out)[:size]


def _best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def test_one_megabyte_with_fifty_secrets_is_redacted_in_well_under_a_second() -> None:
    secrets = _secrets(50)
    redact = Redactor(secrets, pairs=[(f"user{i}", s) for i, s in enumerate(secrets[:10])])
    redact("warm up: build the matcher")
    one, four = _text(1 << 20, secrets), _text(4 << 20, secrets)
    out = redact(one)
    assert not any(s in out for s in secrets)
    assert sum(s in one for s in secrets) > 10  # the text did contain some
    # Interleaved, best of five: a busy machine slows both sizes alike.
    t1 = t4 = float("inf")
    for _ in range(5):
        t1 = min(t1, _best_of(1, lambda: redact(one)))
        t4 = min(t4, _best_of(1, lambda: redact(four)))
    assert t1 < 0.5, f"1 MB took {t1:.3f} s"
    assert t4 < 6 * t1, f"4 MB took {t4:.3f} s, 1 MB {t1:.3f} s: not linear"


@pytest.mark.parametrize(
    "attack",
    [
        "A" * 32_768,
        "a1" * 16_384,
        "GET /nic/update?q=" + "A" * 8100 + "\x01 HTTP/1.1",
        "https://" + "A" * 32_768,
        "https://user:" + "A" * 32_768,
        "password=" * 4_000,
        "Authorization:" * 2_000,
        "a://" * 8_000,
        "Bearer " * 4_000,
        " token = " * 3_000,
    ],
    ids=lambda a: repr(a[:24]),
)
def test_hostile_input_is_fast(attack: str) -> None:
    redact = Redactor(_secrets(50))
    redact("warm up")
    assert _best_of(2, lambda: redact(attack)) < 0.1
    # 32 times the input (about 1 MB): a quadratic pattern would take hours here
    big = attack * 32
    assert _best_of(1, lambda: redact(big)) < 2.0
