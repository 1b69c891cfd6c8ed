"""``tunnelwarden command ...``: every command of the chat command layer (bot/commands.py)
works from the CLI too, through the same functions, as the real console script."""

from __future__ import annotations

from pathlib import Path

from bot.commands import REGISTRY
from tests.test_cli import tw


def test_every_registered_command_is_reachable_from_the_cli(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "tw.toml"
    config.write_text('[sites.home]\ndescription = "at home"\n')
    env = {"TUNNELWARDEN_CONFIG": str(config)}
    listed = tw(redis_url, prefix, "command", "help", env=env)
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0].rstrip(":") for line in listed.stdout.splitlines()[1:] if line}
    assert names == set(REGISTRY), "help lists the registry, nothing more or less"

    status = tw(redis_url, prefix, "command", "status", "home", env=env)
    assert status.returncode == 0, status.stderr
    assert "home" in status.stdout

    paused = tw(redis_url, prefix, "command", "pause", "home", "30m", env=env)
    assert paused.returncode == 0, paused.stderr
    again = tw(redis_url, prefix, "status", "--json", env=env)
    assert '"paused": true' in again.stdout, "the same state the CLI's own status reads"

    unknown = tw(redis_url, prefix, "command", "reboot", "home", env=env)
    assert unknown.returncode == 1
    assert "unknown command 'reboot'" in unknown.stdout + unknown.stderr
    assert "Traceback" not in unknown.stdout + unknown.stderr
