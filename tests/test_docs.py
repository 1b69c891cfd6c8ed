"""The docs work when followed: the README's and docs' ```sh blocks run as written.

A block whose first line is ``# not run in tests: <why>`` (it installs packages, needs a real
Azure tenant, ...) is skipped, visibly in the doc itself. The others run in order in one bash
session per group (``set -euo pipefail``: any failing command fails the test), from the
repository's root, with ``.venv/bin`` on PATH, the test's private Redis, a temporary state
directory and any-free ports for the bot's listeners. Background processes a block starts
(``tunnelwarden run &``, the simulator) are ended with the session. Nothing reaches anything
but 127.0.0.1: every URL in a run block is checked to be loopback before it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

ROOT = Path(__file__).parent.parent
SKIP = "# not run in tests:"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
URL = re.compile(r"\b(?:https?|redis)://([^/\s:\"'$]+)")
# Groups of docs that share one shell session, in order (the simulator's walk-through sets up
# what docs/azure.md's commands run against).
SESSIONS = {
    "readme": ["README.md"],
    "simulator-then-azure": ["docs/simulator.md", "docs/azure.md"],
}
SIM_PORT = 8443  # as written in docs/simulator.md


def sh_blocks(doc: str) -> list[str]:
    return BLOCK.findall((ROOT / doc).read_text(encoding="utf-8"))


def runnable(doc: str) -> list[str]:
    return [b for b in sh_blocks(doc) if not b.lstrip().startswith(SKIP)]


def test_docs_have_runnable_blocks_and_marked_skips() -> None:
    """Each doc of a session has blocks that run; a skipped one says why."""
    for docs in SESSIONS.values():
        for doc in docs:
            blocks = sh_blocks(doc)
            assert runnable(doc), f"{doc}: no runnable ```sh block"
            for block in blocks:
                first = block.lstrip().splitlines()[0]
                if first.startswith(SKIP):
                    assert len(first) > len(SKIP) + 3, f"{doc}: a skip marker without a reason"
    skipped = [b for b in sh_blocks("docs/azure.md") if b.lstrip().startswith(SKIP)]
    assert all("az " in b for b in skipped), "only the blocks that need Azure are skipped"


def test_every_docs_block_runs_or_says_why_not() -> None:
    """No doc has a ```sh block that no session runs and no marker explains."""
    covered = {doc for docs in SESSIONS.values() for doc in docs}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        doc = str(path.relative_to(ROOT))
        if doc in covered:
            continue
        unmarked = [b for b in sh_blocks(doc) if not b.lstrip().startswith(SKIP)]
        assert unmarked == [], f"{doc}: a ```sh block no docs session runs (mark it {SKIP!r})"


def test_run_blocks_only_talk_to_loopback() -> None:
    for docs in SESSIONS.values():
        for doc in docs:
            for block in runnable(doc):
                for host in URL.findall(block):
                    assert host in ("127.0.0.1", "localhost", "[::1]"), f"{doc}: {host}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(300)
@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_doc_blocks_run_as_written(
    session: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    docs = SESSIONS[session]
    if any(f":{SIM_PORT}" in b for d in docs for b in runnable(d)) and not _port_free(SIM_PORT):
        pytest.skip(f"127.0.0.1:{SIM_PORT} is taken: the simulator's walk-through needs it")
    script = "set -euo pipefail\n" + "\n".join(b for d in docs for b in runnable(d))
    env = cli_env(redis_url, prefix)
    for key in ("HOME_PUSH_PASSWORD", "SLACK_WEBHOOK_URL", "STATE_DIRECTORY"):
        env.pop(key, None)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        XDG_STATE_HOME=str(tmp_path / "state"),
        TUNNELWARDEN_HTTP__PORT="0",
        TUNNELWARDEN_LOG__FORMAT="text",
        NO_COLOR="1",
        COLUMNS="200",
    )
    log = tmp_path / "session.log"
    with log.open("w") as sink:  # a file, not a pipe: background processes keep a pipe open
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its background processes are ended with it
        )
        try:
            proc.wait(timeout=240)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    if session == "readme":
        assert "queued test.sleep for home" in output, output[-4000:]
    else:
        assert "lng lng-home gatewayIpAddress: 198.51.100.10 -> 203.0.113.7" in output
        assert '"connectionStatus": "Connecting"' in output  # the REST-made tunnel
        assert "update-local-gateway: ok" in output, output[-4000:]  # the router's new address
        assert "recreate-connection: no_changes" in output, output[-4000:]  # azure.md, converged
