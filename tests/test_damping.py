"""Flap damping (bot.damping) against synthetic traces of the primary path.

A trace is a list of inputs at absolute times: judged samples of the primary (`up`), reports of
the failback playbook's verify (`verify`), and manual `hold`/`release`. `drive` plays it like
the real system: the sampler takes every sample (`sample`), the reconciler decides (`decide`)
at the sampler's edges and whenever the `next_wakeup` it left in the scheduler's due-time set
is due (or, with `every=True`, at every sample: a level-triggered decision must not care), and
with `roundtrip=True` both records go through their Redis-hash form after every step, as if the
process had restarted each time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from bot.damping import (
    Action,
    DampingConfig,
    DampingState,
    FailBack,
    FailOver,
    Notify,
    PathSamples,
    RollBack,
    decide,
    failback_result,
    hold,
    next_wakeup,
    release,
    reusable_at,
    sample,
    up_since,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, so ~HH:MM texts are easy to read
STEP = 20.0  # seconds between judged samples
CFG = DampingConfig()
H = CFG.half_life_s


@dataclass(frozen=True)
class Input:
    t: float
    kind: str  # "up" (a sample; value = primary up), "verify" (value = ok), "hold", "release"
    value: bool = True
    until: float | None = None


Log = list[tuple[float, Action]]


def samples(start: float, end: float, up: bool) -> list[Input]:
    """Samples every STEP seconds in [start, end), relative to T0."""
    n = round((end - start) / STEP)
    return [Input(T0 + start + i * STEP, "up", up) for i in range(n)]


@dataclass
class Run:
    """Both records, and the wakeup the last decision left in the due-time set."""

    state: DampingState
    obs: PathSamples
    due: float | None = None


def drive(
    inputs: list[Input],
    cfg: DampingConfig = CFG,
    start: Run | None = None,
    *,
    every: bool = False,
    roundtrip: bool = False,
    drain_until: float | None = None,
) -> tuple[Run, Log]:
    run = start if start is not None else Run(DampingState(), PathSamples())
    log: Log = []

    def decided(t: float, result: tuple[DampingState, list[Action]]) -> None:
        run.state, acts = result
        log.extend((t, a) for a in acts)
        run.due = next_wakeup(run.state, run.obs, cfg, t)
        if roundtrip:
            run.state = DampingState.from_fields(run.state.to_fields())
            run.obs = PathSamples.from_fields(run.obs.to_fields())

    def fire_due(limit: float) -> None:
        while run.due is not None and run.due <= limit:
            due, run.due = run.due, None
            decided(due, decide(run.state, run.obs, cfg, due))

    for item in sorted(inputs, key=lambda i: i.t):
        fire_due(item.t)
        if item.kind == "up":
            run.obs, edge = sample(run.obs, cfg, item.t, item.value)
            if edge is not None or every:
                decided(item.t, decide(run.state, run.obs, cfg, item.t))
            elif roundtrip:
                run.obs = PathSamples.from_fields(run.obs.to_fields())
        elif item.kind == "verify":
            decided(item.t, failback_result(run.state, run.obs, cfg, item.t, item.value))
        elif item.kind == "hold":
            decided(item.t, hold(run.state, item.until))
        else:
            state, acts = release(run.state)
            state, more = decide(state, run.obs, cfg, item.t)  # what a caller does after it
            decided(item.t, (state, acts + more))
    if drain_until is not None:
        fire_due(drain_until)
    return run, log


def times(log: Log, kind: type) -> list[float]:
    return [t for t, a in log if isinstance(a, kind)]


def notes(log: Log, kind: str | None = None) -> list[tuple[float, Notify]]:
    return [(t, a) for t, a in log if isinstance(a, Notify) and (kind is None or a.kind == kind)]


def verify_after_failbacks(log: Log, delay: float, ok: bool = True) -> list[Input]:
    return [Input(t + delay, "verify", ok) for t in times(log, FailBack)]


def replay_with_verifies(inputs: list[Input], delay: float = 30.0) -> tuple[DampingState, Log]:
    """Run the trace, then again with a good verify report `delay` after each failback (the
    first run tells when failbacks happen; verifies only confirm them, never move them)."""
    _, first = drive(inputs)
    return drive(inputs + verify_after_failbacks(first, delay))


def expected_penalty(flap_times: list[float], cfg: DampingConfig = CFG) -> float:
    """The decayed-sum penalty right after the last flap, computed independently."""
    p, prev = 0.0, flap_times[0]
    for f in flap_times:
        p = min(p * 2 ** (-(f - prev) / cfg.half_life_s) + cfg.penalty_per_flap, cfg.max_penalty)
        prev = f
    return p


# --- configuration --------------------------------------------------------------------------


def test_config_defaults_are_those_of_c5() -> None:
    assert (CFG.fail_after, CFG.success_after, CFG.stable_s) == (3, 4, 300.0)
    assert (CFG.half_life_s, CFG.penalty_per_flap) == (900.0, 1000.0)
    assert (CFG.suppress_threshold, CFG.reuse_threshold, CFG.max_suppress_s) == (2000, 750, 3600)
    assert CFG.max_penalty == pytest.approx(12_000.0)  # 750 · 2^(60 min / 15 min)
    with pytest.raises(ValidationError):
        DampingConfig(halflife=60)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DampingConfig(reuse_threshold=2000, suppress_threshold=2000)


# --- single blip ----------------------------------------------------------------------------


def test_single_blip_fails_back_once_when_the_penalty_allows_not_before_the_window() -> None:
    # Down for three samples (100, 120, 140), then up for good.
    trace = samples(0, 100, True) + samples(100, 160, False) + samples(160, 2000, True)
    run, log = replay_with_verifies(trace)

    assert times(log, FailOver) == [T0 + 140]  # F = 3 failed samples in a row
    # Up since 160: the stability window ends at 460, but one flap's penalty (1000) reaches
    # reuse (750) only at 140 + H·log2(1000/750) ≈ 513.5: that is when it fails back.
    failback = T0 + 140 + H * math.log2(1000 / 750)
    assert times(log, FailBack) == [failback]
    assert failback > T0 + 160 + CFG.stable_s
    assert [n.kind for _, n in notes(log)] == ["failover", "failback", "stable"]
    assert notes(log, "stable")[0][0] == failback + CFG.verify_window_s
    assert run.state.active == "primary" and run.state.verify_until is None
    assert run.state.episode_flaps == 0  # the episode is over


def test_single_longer_outage_fails_back_exactly_at_the_end_of_the_window() -> None:
    # Down 100..700 (the penalty decays meanwhile), up from 720: the window is what binds.
    trace = samples(0, 100, True) + samples(100, 720, False) + samples(720, 2000, True)
    _, log = replay_with_verifies(trace)
    assert times(log, FailOver) == [T0 + 140]
    assert times(log, FailBack) == [T0 + 720 + CFG.stable_s]


def test_success_threshold_also_binds() -> None:
    # Sparse samples (every 200 s): at 300 s of continuity only 2 good samples, S = 4 needs
    # the fourth good sample.
    cfg = DampingConfig(penalty_per_flap=500)  # below reuse: the penalty does not bind
    trace = [Input(T0 + t, "up", False) for t in (0, 200, 400)]
    trace += [Input(T0 + t, "up", True) for t in (600, 800, 1000, 1200, 1400)]
    _, log = drive(trace, cfg)
    assert times(log, FailOver) == [T0 + 400]
    assert times(log, FailBack) == [T0 + 1200]  # the 4th good sample (window ended at 900)


# --- flapping every 2 minutes ---------------------------------------------------------------


def test_flapping_every_two_minutes_is_suppressed_and_said_once() -> None:
    # For 30 min: down 60 s (3 samples), up 60 s; then calm for good.
    trace: list[Input] = []
    for k in range(15):
        trace += samples(k * 120, k * 120 + 60, False) + samples(k * 120 + 60, k * 120 + 120, True)
    trace += samples(1800, 8000, True)
    run, log = replay_with_verifies(trace)

    flaps = [T0 + 40 + 120 * k for k in range(15)]
    assert times(log, FailOver) == [flaps[0]]  # traffic left the primary once
    suppressed = notes(log, "suppressed")
    assert len(suppressed) == 1  # once per episode, not every flap
    at, note = suppressed[0]
    assert at == flaps[2]  # 1000 → 1911.6 → 2743.0 > 2000 at the third flap
    p3 = expected_penalty(flaps[:3])
    assert p3 == pytest.approx(2743.0, abs=0.1)
    assert note.at == pytest.approx(flaps[2] + H * math.log2(p3 / 750), abs=1e-6)
    assert note.text.startswith("primary flapping, failback suppressed until ~00:33 UTC (3 flaps")

    # One failback, only after it calmed (up from 1740) and the penalty of 15 flaps decayed.
    p15 = expected_penalty(flaps)
    assert p15 < CFG.max_penalty
    assert times(log, FailBack) == [pytest.approx(flaps[-1] + H * math.log2(p15 / 750), abs=1e-6)]
    assert times(log, FailBack)[0] > T0 + 1740 + CFG.stable_s
    assert times(log, RollBack) == []
    stable = notes(log, "stable")
    assert len(stable) == 1 and "(15 flaps in this episode)" in stable[0][1].text
    assert not run.state.suppressed and run.state.active == "primary"


def test_penalty_is_capped_so_suppression_ends_within_max_suppress() -> None:
    # A flap every 80 s for 12 hours: the penalty saturates at the cap.
    trace: list[Input] = []
    for k in range(540):
        trace += samples(k * 80, k * 80 + 60, False) + samples(k * 80 + 60, k * 80 + 80, True)
    run, _ = drive(trace)
    assert run.state.penalty == pytest.approx(CFG.max_penalty)
    assert reusable_at(run.state, CFG) - run.state.penalty_at == pytest.approx(CFG.max_suppress_s)


def test_short_half_lives_leave_the_penalty_uncapped_instead_of_overflowing() -> None:
    # 2^(3600 / 1) is beyond a float: the cap is simply not binding (test timings do this).
    cfg = DampingConfig(half_life_s=1.0)
    assert cfg.max_penalty == math.inf
    trace = samples(0, 60, False) + samples(60, 120, True)
    run, _ = drive(trace, cfg)
    assert run.state.penalty == cfg.penalty_per_flap and run.state.active == "secondary"


# --- half-up primary ------------------------------------------------------------------------


def half_up_trace() -> list[Input]:
    # Blip, failback at ≈513.5; the verify passes at +20 s, then the primary drops (560..600),
    # inside the verify window; then it is up for good.
    f1 = T0 + 140 + H * math.log2(1000 / 750)
    return (
        samples(0, 100, True)
        + samples(100, 160, False)
        + samples(160, 560, True)
        + samples(560, 620, False)
        + samples(620, 4000, True)
        + [Input(f1 + 20, "verify", True)]
    )


def test_half_up_primary_rolls_back_counts_a_flap_and_waits_the_min_interval() -> None:
    f1 = T0 + 140 + H * math.log2(1000 / 750)
    f2 = f1 + CFG.min_failback_interval_s
    run, log = drive([*half_up_trace(), Input(f2 + 30, "verify", True)])

    assert times(log, FailOver) == [T0 + 140]
    assert times(log, RollBack) == [T0 + 600]  # judged down inside the verify window
    rolled = notes(log, "rolled_back")
    assert len(rolled) == 1 and rolled[0][1].at == f2
    # The rollback counted as a flap: 1000 decayed over 460 s, plus 1000.
    assert expected_penalty([T0 + 140, T0 + 600]) == pytest.approx(1701.7, abs=0.1)
    # Second failback: the window (620 + 300) and the penalty (≈1663) allow it earlier, the
    # minimum interval since the first failback does not.
    assert times(log, FailBack) == [f1, f2]
    stable = notes(log, "stable")
    assert len(stable) == 1 and "(2 flaps in this episode)" in stable[0][1].text
    assert run.state.active == "primary"


def test_failed_verify_rolls_back_at_once_and_counts_a_flap() -> None:
    f1 = T0 + 140 + H * math.log2(1000 / 750)
    trace = samples(0, 100, True) + samples(100, 160, False) + samples(160, 1000, True)
    run, log = drive([*trace, Input(f1 + 10, "verify", False)])
    assert times(log, RollBack) == [f1 + 10]
    assert run.state.active == "secondary"
    assert run.state.penalty == pytest.approx(expected_penalty([T0 + 140, f1 + 10]))
    assert up_since(run.state, run.obs) == f1 + 10  # probation restarted at the rollback
    # A late or repeated report changes nothing.
    assert failback_result(run.state, run.obs, CFG, f1 + 20, True) == (run.state, [])


def test_no_verify_result_within_the_window_rolls_back() -> None:
    f1 = T0 + 140 + H * math.log2(1000 / 750)
    trace = samples(0, 100, True) + samples(100, 160, False) + samples(160, 1000, True)
    _, log = drive(trace)
    assert times(log, FailBack) == [f1]
    assert times(log, RollBack) == [f1 + CFG.verify_window_s]
    assert "no verify result" in notes(log, "rolled_back")[0][1].text


# --- restart mid-probation ------------------------------------------------------------------


def test_records_round_trip_through_redis_fields() -> None:
    _, log = drive(half_up_trace())
    run, _ = drive(half_up_trace()[:40])
    for record in (run.state, run.obs):
        fields = record.to_fields()
        kind = type(record)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
        assert kind.from_fields(fields) == record
        assert kind.from_fields({}) == kind()
        assert kind.from_fields({**fields, "from_a_newer_writer": "x"}) == record
    with pytest.raises(ValidationError):
        DampingState.from_fields({**run.state.to_fields(), "penalty": "lots"})
    with pytest.raises(ValidationError):
        PathSamples.from_fields({**run.obs.to_fields(), "downs": "many"})
    assert log  # the trace did something


def flapping_then_calm() -> list[Input]:
    trace: list[Input] = []
    for k in range(5):
        trace += samples(k * 120, k * 120 + 60, False) + samples(k * 120 + 60, k * 120 + 120, True)
    return trace + samples(600, 6000, True)


def longer_outage() -> list[Input]:
    return samples(0, 100, True) + samples(100, 720, False) + samples(720, 3000, True)


TRACES = [half_up_trace, flapping_then_calm, longer_outage]


@pytest.mark.parametrize("trace_of", TRACES)
def test_deciding_at_every_sample_or_only_at_edges_and_wakeups_is_the_same(
    trace_of: Callable[[], list[Input]],
) -> None:
    trace = trace_of()
    at_edges, log_edges = drive(trace, drain_until=T0 + 10_000)
    at_every, log_every = drive(trace, every=True, drain_until=T0 + 10_000)
    assert log_edges == log_every
    assert at_edges.state == at_every.state
    assert any(isinstance(a, FailBack) for _, a in log_edges)


@pytest.mark.parametrize("trace_of", TRACES)
def test_restart_mid_probation_decides_the_same(trace_of: Callable[[], list[Input]]) -> None:
    trace = trace_of()
    straight, straight_log = drive(trace, drain_until=T0 + 10_000)
    # Every step through the Redis hash, as if the process restarted after each one.
    every, every_log = drive(trace, roundtrip=True, drain_until=T0 + 10_000)
    assert every_log == straight_log and every.state == straight.state

    # One restart in the middle of probation: on the secondary, the primary up for half the
    # stability window.
    def mid_probation(i: int) -> bool:
        r = drive(trace[:i])[0]
        since = up_since(r.state, r.obs)
        return r.state.active == "secondary" and since is not None and trace[i - 1].t - since >= 150

    cut = next(i for i in range(1, len(trace)) if mid_probation(i))
    before, log1 = drive(trace[:cut])
    assert before.state.active == "secondary" and before.obs.up_since is not None
    # What HSET stored, and the scheduler's entry: the process dies.
    stored = (before.state.to_fields(), before.obs.to_fields(), before.due)
    del before
    restored = Run(
        DampingState.from_fields(stored[0]), PathSamples.from_fields(stored[1]), stored[2]
    )
    after, log2 = drive(trace[cut:], start=restored, drain_until=T0 + 10_000)
    assert log1 + log2 == straight_log
    assert after.state == straight.state


# --- manual hold ----------------------------------------------------------------------------


def blip() -> list[Input]:
    return samples(0, 100, True) + samples(100, 160, False) + samples(160, 4000, True)


def test_indefinite_hold_blocks_failback_until_released() -> None:
    run, log = drive([*blip(), Input(T0 + 150, "hold"), Input(T0 + 3000.5, "release")])
    assert times(log, FailOver) == [T0 + 140]
    assert times(log, FailBack) == [T0 + 3000.5]  # at the release, not before
    kinds = [n.kind for _, n in notes(log)]
    assert kinds[:3] == ["failover", "held", "released"]
    assert not run.state.hold_indefinite


def test_hold_until_a_time_expires_by_itself() -> None:
    run, log = drive([*blip(), Input(T0 + 150, "hold", until=T0 + 1234.5)])
    assert times(log, FailBack)[0] == T0 + 1234.5  # next_wakeup fired at the hold's end
    held = notes(log, "held")
    assert held[0][1].text == "automatic failback held until ~00:21 UTC"
    assert [t for t, _ in notes(log, "released")] == [T0 + 1234.5]
    assert run.state.hold_until is None


def test_hold_does_not_stop_a_failover() -> None:
    held, _ = hold(DampingState(), None)
    run, log = drive(samples(0, 60, False), start=Run(held, PathSamples()))
    assert times(log, FailOver) == [T0 + 40]
    assert run.state.active == "secondary" and run.state.hold_indefinite


# --- next_wakeup ----------------------------------------------------------------------------

UP = PathSamples(judged_up=True, up_streak=10, up_since=1000.0, last_at=1000.0, downs=1)


def on_secondary(**update: object) -> DampingState:
    return DampingState(active="secondary", seen_downs=1).model_copy(update=update)


def test_next_wakeup_cases() -> None:
    assert next_wakeup(DampingState(), UP, CFG, 0) is None  # on the primary, nothing to do
    assert next_wakeup(DampingState(verify_until=5000.0), UP, CFG, 0) == 5000.0
    down = PathSamples(judged_up=False, fail_streak=3, downs=1)
    assert next_wakeup(on_secondary(), down, CFG, 0) is None  # primary down
    assert next_wakeup(on_secondary(), UP, CFG, 1000) == 1300.0  # end of the stability window
    # Penalty 1500 at 1000 halves to reuse 750 in exactly one half-life.
    assert next_wakeup(on_secondary(penalty=1500.0, penalty_at=1000.0), UP, CFG, 1000) == 1900.0
    assert next_wakeup(on_secondary(last_failback_at=900.0), UP, CFG, 1000) == 2700.0
    assert next_wakeup(on_secondary(hold_until=4000.0), UP, CFG, 1000) == 4000.0
    assert next_wakeup(on_secondary(hold_indefinite=True), UP, CFG, 1000) is None
    # A rollback at 1100 restarts the stability window there.
    assert next_wakeup(on_secondary(probation_from=1100.0), UP, CFG, 1000) == 1400.0
    assert next_wakeup(on_secondary(), UP, CFG, 1300) is None  # already due: decide now


def test_decide_at_the_wakeup_fails_back_and_not_a_moment_before() -> None:
    state = on_secondary(penalty=1500.0, penalty_at=1000.0)
    due = next_wakeup(state, UP, CFG, 1000)
    assert due == 1900.0
    assert decide(state, UP, CFG, due - 0.001) == (state, [])
    after, actions = decide(state, UP, CFG, due)
    assert isinstance(actions[0], FailBack)
    assert after.active == "primary" and after.verify_until == due + CFG.verify_window_s
    assert next_wakeup(after, UP, CFG, due) == due + CFG.verify_window_s


def test_too_few_good_samples_leave_it_to_the_sampler_s_recovered_edge() -> None:
    obs = UP.model_copy(update={"up_streak": 2})
    state = on_secondary()
    assert next_wakeup(state, obs, CFG, 1000) == 1300.0
    state, actions = decide(state, obs, CFG, 1300)
    assert actions == [] and next_wakeup(state, obs, CFG, 1300) is None
    obs, edge = sample(obs, CFG, 1310, True)
    assert edge is None
    obs, edge = sample(obs, CFG, 1320, True)
    assert edge == "recovered"  # the 4th good sample: the reconciler is woken
    state, actions = decide(state, obs, CFG, 1320)
    assert isinstance(actions[0], FailBack)


def test_an_older_sample_is_ignored() -> None:
    obs, _ = sample(PathSamples(), CFG, 100, True)
    assert sample(obs, CFG, 99, False) == (obs, None)


def test_downs_missed_between_two_decisions_are_all_counted() -> None:
    # The reconciler was busy: the sampler judged the primary down twice meanwhile.
    obs = PathSamples()
    for i, ok in enumerate([False, False, False, True, False, False, False]):
        obs, _ = sample(obs, CFG, T0 + 20 * i, ok)
    assert obs.downs == 2 and obs.down_at == T0 + 120
    state, actions = decide(DampingState(), obs, CFG, T0 + 200)
    assert [type(a) for a in actions if not isinstance(a, Notify)] == [FailOver]
    assert state.episode_flaps == 2 and state.seen_downs == 2
    assert state.penalty == pytest.approx(2000.0)


def test_a_lost_sampler_record_starts_counting_again_without_a_flap() -> None:
    state = DampingState(active="primary", seen_downs=5)
    after, actions = decide(state, PathSamples(), CFG, 1000)
    assert actions == [] and after.seen_downs == 0 and after.penalty == 0
