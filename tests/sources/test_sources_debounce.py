"""Tests for bot.sources.debounce with a hand-driven clock."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import ValidationError

from bot.sources.debounce import DebounceConfig, Debouncer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    polls: int = 0, seconds: float = 0.0, combine: Literal["all", "any"] = "all"
) -> tuple[Debouncer, FakeClock]:
    clock = FakeClock()
    cfg = DebounceConfig(polls=polls, seconds=seconds, combine=combine)
    return Debouncer(cfg, clock=clock), clock


def test_zero_thresholds_report_immediately() -> None:
    deb, _ = make(polls=0, seconds=0)
    deb.seed("s1", "203.0.113.1")
    d = deb.observe("s1", "203.0.113.2")
    assert d.kind == "report"
    assert (d.ip, d.previous) == ("203.0.113.2", "203.0.113.1")
    assert deb.stable("s1") == "203.0.113.2"
    assert deb.observe("s1", "203.0.113.2").kind == "unchanged"


def test_consecutive_polls() -> None:
    deb, _ = make(polls=3)
    deb.seed("s1", "203.0.113.1")
    kinds = [deb.observe("s1", "203.0.113.2").kind for _ in range(3)]
    assert kinds == ["pending", "pending", "report"]
    assert deb.stable("s1") == "203.0.113.2"
    assert deb.pending("s1") is None


def test_flap_back_to_old_value_cancels() -> None:
    deb, _ = make(polls=2)
    deb.seed("s1", "203.0.113.1")
    assert deb.observe("s1", "203.0.113.2").kind == "pending"
    cancelled = deb.observe("s1", "203.0.113.1")
    assert cancelled.kind == "cancelled"
    assert cancelled.ip == "203.0.113.2" and cancelled.previous == "203.0.113.1"
    # counting starts over: one more sighting is not enough
    assert deb.observe("s1", "203.0.113.2").kind == "pending"
    assert deb.stable("s1") == "203.0.113.1"
    assert deb.observe("s1", "203.0.113.2").kind == "report"


def test_a_different_new_value_restarts_the_count() -> None:
    deb, _ = make(polls=2)
    deb.seed("s1", "203.0.113.1")
    deb.observe("s1", "203.0.113.2")
    d = deb.observe("s1", "203.0.113.3")
    assert d.kind == "pending" and d.observations == 1
    assert deb.observe("s1", "203.0.113.3").kind == "report"


def test_seconds_threshold_uses_injected_clock() -> None:
    deb, clock = make(seconds=30)
    deb.seed("s1", "203.0.113.1")
    assert deb.observe("s1", "203.0.113.2").kind == "pending"
    clock.now += 29.9
    assert deb.observe("s1", "203.0.113.2").kind == "pending"
    clock.now += 0.1
    d = deb.observe("s1", "203.0.113.2")
    assert d.kind == "report" and d.elapsed_s == pytest.approx(30.0)


def test_due_reports_silent_push_after_time() -> None:
    deb, clock = make(seconds=60)
    deb.seed("s1", "203.0.113.1")
    deb.observe("s1", "203.0.113.2")
    assert deb.due() == []
    clock.now += 61
    due = deb.due()
    assert [(d.kind, d.site, d.ip) for d in due] == [("report", "s1", "203.0.113.2")]
    assert deb.due() == []  # reported once


def test_combine_all_vs_any() -> None:
    both, clock = make(polls=2, seconds=10, combine="all")
    both.seed("s", "203.0.113.1")
    both.observe("s", "203.0.113.2")
    assert both.observe("s", "203.0.113.2").kind == "pending"  # 2 polls but 0 s
    clock.now += 10
    assert both.observe("s", "203.0.113.2").kind == "report"

    either, _ = make(polls=2, seconds=10, combine="any")
    either.seed("s", "203.0.113.1")
    either.observe("s", "203.0.113.2")
    assert either.observe("s", "203.0.113.2").kind == "report"


def test_sites_are_independent_and_unseeded_site_debounces_first_value() -> None:
    deb, _ = make(polls=2)
    deb.seed("a", "203.0.113.1")
    assert deb.observe("b", "198.51.100.1").kind == "pending"
    assert deb.observe("a", "203.0.113.1").kind == "unchanged"
    d = deb.observe("b", "198.51.100.1")
    assert d.kind == "report" and d.previous is None
    deb.forget("b")
    assert deb.stable("b") is None


def test_config_rejects_negative_values() -> None:
    with pytest.raises(ValidationError):
        DebounceConfig(polls=-1)
    with pytest.raises(ValidationError):
        DebounceConfig(seconds=-0.5)
