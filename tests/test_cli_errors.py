"""Every CLI error is one line and a documented exit code, never a traceback.

A table of bad invocations runs through the real console script (subprocess), against the
ARM simulator, a private Redis on loopback, an ARM endpoint that is down, a port that is
taken. Each must print exactly one non-empty error line (a ``hint:`` line may follow), exit
with the code README.md's table gives, and print no ``Traceback`` anywhere.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env, tunnelwarden
from tests.helpers import free_port

ROOT = Path(__file__).parent.parent
WORLD = ROOT / "deploy" / "sim-world.example.toml"
SUB = "00000000-0000-0000-0000-000000000000"

CONFIG = """
[azure]
cloud = "sim"
endpoint = "{endpoint}"
subscription_id = "{subscription}"

[sites.home]
resource_group = "rg-vpn"
local_network_gateway = "lng-home"
connection = "conn-home"

[sites.home.push]
hostname = "home.example.net"
username = "home"
password_env = "TW_TEST_PUSH_PASSWORD"
"""


def _exit_codes_documented() -> dict[int, str]:
    """The README's exit code table: {code: meaning}."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return {
        int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", text, re.M)
    }


@pytest.fixture(scope="module")
def arm_url() -> Iterator[str]:
    """The ARM simulator with the shipped example world (the example config's names)."""
    proc = subprocess.Popen(
        [*tunnelwarden(), "sim", "arm", "--port", "0", "--world", str(WORLD)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match, line
    yield match.group(0)
    proc.terminate()
    proc.wait(timeout=30)


def _config(tmp_path: Path, endpoint: str, subscription: str = SUB) -> str:
    path = tmp_path / f"tw-{abs(hash((endpoint, subscription)))}.toml"
    path.write_text(CONFIG.format(endpoint=endpoint, subscription=subscription))
    return str(path)


def _run(
    redis_url: str, prefix: str, tmp_path: Path, *args: str, push_password: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    full = cli_env(redis_url, prefix, **env)
    if push_password:
        full["TW_TEST_PUSH_PASSWORD"] = "pw"
    full["XDG_STATE_HOME"] = str(tmp_path / "state")
    full["COLUMNS"] = "200"
    return subprocess.run(
        [*tunnelwarden(), *args], env=full, capture_output=True, text=True, timeout=90
    )


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line for line in result.stderr.splitlines() if line.strip() and not line.startswith("hint:")
    ]


# (id, args builder, expected exit code, text the one error line must hold)
CASES: list[tuple[str, list[str], int, str]] = [
    (
        "arm-down-dry-run",
        [
            "-c",
            "{down}",
            "playbook",
            "run",
            "update-local-gateway",
            "--site",
            "home",
            "--param",
            "ip=203.0.113.77",
            "--dry-run",
        ],
        5,
        "azure: Cannot connect",
    ),
    (
        "wrong-subscription-dry-run",
        [
            "-c",
            "{wrong_sub}",
            "playbook",
            "run",
            "update-local-gateway",
            "--site",
            "home",
            "--param",
            "ip=203.0.113.77",
            "--dry-run",
        ],
        5,
        "SubscriptionNotFound",
    ),
    ("redis-url-http", ["--redis-url", "http://127.0.0.1:1", "history"], 2, "unsupported scheme"),
    ("redis-down", ["--redis-url", "redis://127.0.0.1:1/0", "status"], 4, "redis:"),
    (
        "bad-param-type",
        [
            "-c",
            "{good}",
            "playbook",
            "run",
            "sleep",
            "--site",
            "home",
            "--param",
            "seconds=abc",
            "--dry-run",
        ],
        2,
        "seconds",
    ),
    (
        "bad-param-type-no-dry-run",
        ["-c", "{good}", "playbook", "run", "sleep", "--site", "home", "--param", "seconds=abc"],
        2,
        "seconds",
    ),
    (
        "unknown-param",
        ["-c", "{good}", "playbook", "run", "noop", "--site", "home", "--param", "nope=1"],
        2,
        "nope",
    ),
    (
        "param-not-k-v",
        ["-c", "{good}", "playbook", "run", "noop", "--site", "home", "--param", "nope"],
        2,
        "expected k=v",
    ),
    (
        "unknown-site",
        ["-c", "{good}", "playbook", "run", "noop", "--site", "nowhere"],
        2,
        "unknown site 'nowhere'",
    ),
    (
        "unknown-playbook",
        ["-c", "{good}", "playbook", "run", "nope", "--site", "home"],
        2,
        "unknown playbook 'nope'",
    ),
    (
        "unknown-event-type",
        ["-c", "{good}", "emit", "ip.chnaged", "--site", "home"],
        2,
        "unknown event type 'ip.chnaged' (known: failback.needed",
    ),
    (
        "markup-in-site",
        ["-c", "{good}", "emit", "test.noop", "--site", "[red]Home Office"],
        2,
        "[red]Home Office",
    ),
    (
        "bad-data-json",
        ["-c", "{good}", "emit", "test.noop", "--site", "home", "--data", "{x"],
        2,
        "--data:",
    ),
    ("bad-duration", ["-c", "{good}", "pause", "home", "--for", "3x"], 1, "not a duration: '3x'"),
    ("no-such-option", ["history", "--bogus"], 2, "No such option: --bogus"),
    ("no-such-command", ["histroy"], 2, "No such command"),
    ("missing-config", ["-c", "/nonexistent/tw.toml", "status"], 2, "cannot read"),
    (
        "world-missing",
        ["sim", "arm", "--port", "0", "--world", "/nonexistent/world.toml"],
        2,
        "--world",
    ),
    (
        "push-secret-unset",
        ["-c", "{good}", "emit", "test.noop", "--site", "home"],
        2,
        "TW_TEST_PUSH_PASSWORD is not set",
    ),
]


@pytest.mark.parametrize(("case", "args", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_and_a_documented_exit_code(
    case: str,
    args: list[str],
    code: int,
    text: str,
    arm_url: str,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    paths = {
        "{down}": _config(tmp_path, f"http://127.0.0.1:{free_port()}"),
        "{wrong_sub}": _config(tmp_path, arm_url, SUB[:-1] + "1"),
        "{good}": _config(tmp_path, arm_url),
    }
    argv = [paths.get(a, a) for a in args]
    result = _run(redis_url, prefix, tmp_path, *argv, push_password=case != "push-secret-unset")
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both
    assert "errors.pydantic.dev" not in both, both
    lines = _error_lines(result)
    assert len(lines) == 1, both
    assert text in lines[0], both
    assert result.returncode == code, both
    assert code in _exit_codes_documented(), f"exit code {code} is not in README's table"


def test_port_taken_is_one_line(redis_url: str, prefix: str, tmp_path: Path, arm_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(
            redis_url,
            prefix,
            tmp_path,
            "-c",
            _config(tmp_path, arm_url),
            "run",
            TUNNELWARDEN_HTTP__PORT=str(port),
            TUNNELWARDEN_WATCHER__ENABLED="false",
        )
    both = result.stdout + result.stderr
    assert "Traceback" not in both and "never retrieved" not in both, both
    errors = [ln for ln in _error_lines(result) if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot listen" in errors[0], both
    assert result.returncode == 6, both


def test_debug_shows_the_traceback(redis_url: str, prefix: str, tmp_path: Path) -> None:
    down = _config(tmp_path, f"http://127.0.0.1:{free_port()}")
    args = [
        "--debug",
        "-c",
        down,
        "playbook",
        "run",
        "update-local-gateway",
        "--site",
        "home",
        "--param",
        "ip=203.0.113.77",
        "--dry-run",
    ]
    result = _run(redis_url, prefix, tmp_path, *args)
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-2].startswith("error: azure:"), result.stderr
    assert result.returncode == 5


def test_read_only_commands_need_no_push_secret(
    redis_url: str, prefix: str, tmp_path: Path, arm_url: str
) -> None:
    """history, status, dead-letters, probe list and failover status run with the push
    password's variable unset (emit, which may use it, refuses: see the table above)."""
    config = _config(tmp_path, arm_url)
    env = cli_env(redis_url, prefix)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env.pop("TW_TEST_PUSH_PASSWORD", None)
    for args in (["history"], ["status"], ["dead-letters"], ["probe", "list"]):
        result = subprocess.run(
            [*tunnelwarden(), "-c", config, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, (args, result.stderr)
    status = subprocess.run(
        [*tunnelwarden(), "-c", config, "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert "state directory:" in status.stdout


def test_state_dir_is_per_user_and_not_the_current_directory(tmp_path: Path) -> None:
    from bot.config import default_state_dir

    assert default_state_dir({"XDG_STATE_HOME": "/x/state", "HOME": "/home/a"}) == Path(
        "/x/state/tunnelwarden"
    )
    assert default_state_dir({"HOME": "/home/a"}) == Path("/home/a/.local/state/tunnelwarden")
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/tw", "HOME": "/h"}) == Path(
        "/var/lib/tw"
    )
    # cd elsewhere: the same data, no .state in the current directory
    env = {k: v for k, v in cli_env("", "p").items() if k != "TUNNELWARDEN_REDIS_URL"}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [*tunnelwarden(), "status", "--json"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "xdg" / "tunnelwarden") in result.stdout
    assert not (elsewhere / ".state").exists()
    assert any((tmp_path / "xdg" / "tunnelwarden").iterdir())


def test_help_version_completion() -> None:
    version = subprocess.run([*tunnelwarden(), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.match(r"tunnelwarden \d+\.\d+", version.stdout)
    env = {"COLUMNS": "120", "PATH": "/usr/bin:/bin"}
    helptext = subprocess.run(
        [*tunnelwarden(), "playbook", "run", "--help"], capture_output=True, text=True, env=env
    ).stdout
    assert "<bool>" not in helptext and "<list[str]>" not in helptext, helptext
    assert "--dry-run" in helptext and "K=V" in helptext
    top = subprocess.run([*tunnelwarden(), "--help"], capture_output=True, text=True, env=env)
    assert "--install-completion" in top.stdout and "new-key" in top.stdout
    completion = subprocess.run(
        [*tunnelwarden(), "--show-completion", "bash"], capture_output=True, text=True
    )
    assert completion.returncode == 0 and "_TUNNELWARDEN_COMPLETE" in completion.stdout


def test_emit_help_lists_every_event_type() -> None:
    import handlers

    helptext = subprocess.run(
        [*tunnelwarden(), "emit", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    flat = " ".join(helptext.replace("│", " ").split())
    missing = [t for t in handlers.builtin() if t not in flat]
    assert not missing, missing
    assert '"v4" or "v6"' in flat


def test_tables_never_cut_the_names_you_type() -> None:
    result = subprocess.run(
        [*tunnelwarden(), "playbook", "list"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )
    assert "update-local-gateway" in result.stdout, result.stdout
    assert "update-local-gatew…" not in result.stdout


def test_param_values_are_text_unless_the_parameter_is_not(
    redis_url: str, prefix: str, tmp_path: Path, arm_url: str
) -> None:
    config = _config(tmp_path, arm_url)
    text = _run(
        redis_url, prefix, tmp_path, "-c", config, "playbook", "run", "notify", "--site",
        "home", "--param", "message=123", "--dry-run", "--json",
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "123" in text.stdout
    number = _run(
        redis_url, prefix, tmp_path, "-c", config, "playbook", "run", "sleep", "--site", "home",
        "--param", "seconds=0.5", "--dry-run", "--json",
    )  # fmt: skip
    assert number.returncode == 0, number.stderr


def test_emit_test_fail_says_when_it_reaches_the_dead_letters(
    redis_url: str, prefix: str, tmp_path: Path, arm_url: str
) -> None:
    result = _run(
        redis_url, prefix, tmp_path, "-c", _config(tmp_path, arm_url), "emit", "test.fail",
        "--site", "home", TUNNELWARDEN_WORKER__VISIBILITY_TIMEOUT="10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # 5 deliveries x (10 s visibility + 5 s reclaim interval) = 75 s
    assert "reaches the dead letters in about 1m15s" in result.stdout, result.stdout


def test_dead_letters_say_gave_up_only_when_that_is_the_reason() -> None:
    from bot.cli import _delivered
    from bot.queue import DeadLetter

    def row(reason: str, deliveries: int) -> DeadLetter:
        return DeadLetter(
            id="1-0", entry_id="1-0", reason=reason, deliveries=deliveries, dead_at=0, raw={}
        )

    assert _delivered(row("gave up after 5 deliveries: boom", 6)) == 5
    assert _delivered(row("unknown event type 'x'", 1)) == 1


def test_a_relative_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    from bot.config import load_config

    path = tmp_path / "conf" / "tw.toml"
    path.parent.mkdir()
    path.write_text('[redis]\nstate_dir = "data"\n')
    assert load_config(path).redis.state_dir == path.parent.resolve() / "data"
