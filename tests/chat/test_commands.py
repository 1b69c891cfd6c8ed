"""The shared command layer over a real Redis and a real worker: roles, pause/resume, the
dry-run-first playbook flow, and the CLI calling the same functions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bot.commands import REGISTRY, Caller, context, dispatch, expire_pauses
from bot.config import ConfigError, load_config
from bot.events import Event
from bot.services import Services
from tests.chat.chat_env import (
    APPROVER,
    NOBODY,
    OPERATOR,
    OPERATOR_HQ,
    PLAYBOOKS,
    SECRET_LIKE,
    VIEWER,
    chat_settings,
    ctx_for,
    slack_id,
    worker,
)
from tests.conftest import cli_env, tunnelwarden
from tests.helpers import eventually


@pytest.fixture
def services(prefix: str, tmp_path: Path, redis_url: str) -> Services:
    from redis.asyncio import Redis

    return Services.build(chat_settings(prefix, tmp_path), Redis.from_url(redis_url))


async def test_help_lists_only_what_the_role_allows(services: Services) -> None:
    viewer = await dispatch(ctx_for(services, VIEWER), "help")
    operator = await dispatch(ctx_for(services, OPERATOR), "help")
    assert any(line.startswith("status") for line in viewer.lines)
    assert not any(line.startswith("pause") for line in viewer.lines)
    assert any(line.startswith("pause") for line in operator.lines)


async def test_a_user_in_no_role_can_do_nothing(services: Services) -> None:
    ctx = ctx_for(services, NOBODY)
    for line in (
        "help",
        "status",
        "history hq",
        "run abc123",
        "pause hq",
        "resume hq",
        "playbook noop hq",
        "probe hq",
        "approve abc",
        "deny abc",
        "apply abc",
    ):
        reply = await dispatch(ctx, line)
        assert not reply.ok, line
        assert reply.text.startswith("not allowed"), (line, reply.text)
    assert await services.state.site_state("hq") == {}


async def test_every_registered_command_names_a_role(services: Services) -> None:
    assert {
        "status",
        "history",
        "run",
        "pause",
        "resume",
        "playbook",
        "probe",
        "approve",
        "deny",
        "help",
    } <= set(REGISTRY)
    assert all(c.role in ("viewer", "operator", "approver") for c in REGISTRY.values())


async def test_viewer_cannot_pause_and_site_restrictions_hold(services: Services) -> None:
    refused = await dispatch(ctx_for(services, VIEWER), "pause hq")
    assert not refused.ok and "operator" in refused.text
    ok = await dispatch(ctx_for(services, OPERATOR_HQ), "pause hq")
    assert ok.ok, ok.text
    other = await dispatch(ctx_for(services, OPERATOR_HQ), "pause branch")
    assert not other.ok and "branch" in other.text
    assert (await services.state.site_state("branch")).get("paused") != "1"


async def test_pause_holds_the_handlers_and_resume_reconciles(services: Services) -> None:
    reply = await dispatch(ctx_for(services, OPERATOR), "pause hq for 2h")
    assert reply.ok and "until" in reply.text
    state = await services.state.site_state("hq")
    assert state["paused"] == "1" and state["paused.by"] == slack_id(OPERATOR)
    assert float(state["paused.until"]) > 0
    event = Event.new("test.noop", "hq", source="chat")
    async with worker(services):
        await services.queue.publish(event)
        record = await eventually(lambda: services.state.recorded("hq", event.id))
    assert record.outcome == "skipped" and "paused" in record.reason
    status = await dispatch(ctx_for(services, VIEWER), "status hq")
    assert "PAUSED" in status.lines[0]
    before = (await services.queue.stats())["length"]
    resumed = await dispatch(ctx_for(services, OPERATOR), "resume hq")
    assert resumed.ok
    assert (await services.state.site_state("hq"))["paused"] == ""
    assert (await services.queue.stats())["length"] == before + 1  # the reconcile hint


async def test_a_timed_pause_runs_out(services: Services) -> None:
    ctx = ctx_for(services, OPERATOR)
    await dispatch(ctx, "pause hq 30m")
    until = float((await services.state.site_state("hq"))["paused.until"])
    assert await expire_pauses(services, now=until - 1) == []
    assert (await services.state.site_state("hq"))["paused"] == "1"
    assert await expire_pauses(services, now=until + 1) == ["hq"]
    assert (await services.state.site_state("hq"))["paused"] == ""


async def test_bad_input_is_refused_with_one_line(services: Services) -> None:
    ctx = ctx_for(services, OPERATOR)
    assert "unknown site" in (await dispatch(ctx, "pause nowhere")).text
    assert "not a duration" in (await dispatch(ctx, "pause hq forever")).text
    assert "unknown playbook" in (await dispatch(ctx, "playbook nope hq")).text
    bad = await dispatch(ctx, "playbook sleep hq seconds=lots")
    assert not bad.ok and "seconds" in bad.text
    assert "unknown command" in (await dispatch(ctx, "reboot everything")).text


async def test_playbook_is_a_dry_run_with_an_apply_reference(services: Services) -> None:
    ctx = ctx_for(services, OPERATOR)
    reply = await dispatch(ctx, "playbook sleep hq seconds=0 steps=2")
    assert reply.ok, reply.text
    assert "dry-run" in reply.text and any("sleep" in line for line in reply.lines)
    (button,) = reply.buttons
    assert button.action == "apply" and "seconds" not in button.value
    assert (await services.queue.stats())["length"] == 0  # a dry-run queues nothing
    async with worker(services):
        applied = await dispatch(ctx, f"apply {button.value}")
        assert applied.ok and applied.follow is not None
        site, run_id = applied.follow
        record = await eventually(lambda: services.state.recorded(site, run_id))
    assert record.outcome == "ok" and record.event_source == "chat"
    assert slack_id(OPERATOR) in record.reason
    again = await dispatch(ctx, f"apply {button.value}")
    assert not again.ok and "applied already" in again.text
    shown = await dispatch(ctx_for(services, VIEWER), f"run {run_id}")
    assert shown.ok and "sleep" in "\n".join(shown.lines)
    assert shown.link == f"http://admin.internal:9108/runs/hq/{run_id}"
    listed = await dispatch(ctx_for(services, VIEWER), "history hq")
    assert run_id[:12] in "\n".join(listed.lines)


async def test_no_secret_in_a_reply(services: Services) -> None:
    reply = await dispatch(ctx_for(services, VIEWER), f"status {SECRET_LIKE}")
    assert not reply.ok
    assert SECRET_LIKE not in reply.plain()


async def test_cli_context_skips_chat_roles(services: Services) -> None:
    ctx = context(services, Caller.cli(), cli=True, playbooks=PLAYBOOKS)
    assert (await dispatch(ctx, "pause branch")).ok
    assert ctx.caller.id.startswith("cli:")


def test_unknown_roles_key_and_display_names_fail_config_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides={"chat": {"roles": {"admins": ["slack:T1:U1"]}}})
    assert any(p.startswith("chat.roles.admins") for p in exc.value.problems)
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides={"chat": {"roles": {"approvers": ["alice"]}}})
    assert any("not a platform user id" in p for p in exc.value.problems)
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides={"chat": {"roles": {"sites": {"nowhere": {}}}}})
    assert any(p.startswith("chat.roles.sites.nowhere") for p in exc.value.problems)
    config = tmp_path / "tw.toml"
    config.write_text('[chat.roles]\nviewer = ["slack:T1:U1"]\n')
    done = subprocess.run(
        [*tunnelwarden(), "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "chat.roles.viewer" in done.stdout


async def test_cli_pause_resume_and_approve_use_the_same_layer(
    services: Services, tmp_path: Path, redis_url: str
) -> None:
    config = tmp_path / "tw.toml"
    config.write_text('[sites.hq]\ndescription = "hq"\n')
    prefix = services.settings.redis.prefix
    env = cli_env(redis_url, prefix)

    def tw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*tunnelwarden(), "--config", str(config), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    paused = tw("pause", "hq", "--for", "2h", "--json")
    assert paused.returncode == 0, paused.stderr
    assert "paused until" in json.loads(paused.stdout)["text"]
    assert (await services.state.site_state("hq"))["paused"] == "1"
    assert tw("resume", "hq").returncode == 0
    assert (await services.state.site_state("hq"))["paused"] == ""
    approval = await ctx_for(services, APPROVER).approvals.create(
        "hq", "noop", {}, slack_id(APPROVER)
    )
    approved = tw("approve", approval.id)
    assert approved.returncode == 0, approved.stderr
    after = await ctx_for(services, APPROVER).approvals.get(approval.id)
    assert after is not None and after.status == "approved" and after.decided_by.startswith("cli:")
    assert after.run_id
    again = tw("deny", approval.id)
    assert again.returncode == 1 and "already approved" in again.stderr


def test_chat_secrets_come_from_env_or_files_never_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tw.toml"
    config.write_text('[chat.slack]\nenabled = true\nbot_token = "xoxb-literal"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert any(
        p.startswith("chat.slack.bot_token: secrets must not be written")
        for p in exc.value.problems
    )
    token_file = tmp_path / "bot-token"
    token_file.write_text("xoxb-from-a-file\n")
    config.write_text(
        f'[chat.slack]\nenabled = true\nbot_token_file = "{token_file}"\n'
        'app_token_env = "TW_TEST_APP_TOKEN"\n'
    )
    with pytest.raises(ConfigError) as exc:  # the variable is not set
        load_config(config)
    assert any("TW_TEST_APP_TOKEN is not set" in p for p in exc.value.problems)
    monkeypatch.setenv("TW_TEST_APP_TOKEN", "xapp-from-env")
    slack = load_config(config).chat.slack
    assert slack.bot_token is not None and slack.bot_token.get_secret_value() == "xoxb-from-a-file"
    assert slack.app_token is not None and slack.app_token.get_secret_value() == "xapp-from-env"
