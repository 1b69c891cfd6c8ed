"""Flap damping: fail over fast, fail back only when the primary is stable.

Pure decision logic (research `anchors-detect-probe.md` §C5): no I/O, no clock. Every function
takes state, the config and the time (`now`, epoch seconds) and returns the new state and what
to do. Two records, with one writer each, both kept in the site's Redis hash (`to_fields()` /
`from_fields()`), so a restart never resets damping:

- **`PathSamples`**, what the path sampler saw of the primary: `sample()` takes one judged
  sample (probe quorum already applied). The primary is *judged down* after `fail_after`
  failed samples in a row (each such judgement counts in `downs`) and judged up again at the
  next good one; any failed sample restarts its run of good ones (`up_since`, `up_streak`).
- **`DampingState`**, what the failover reconciler decided: `decide()` folds in the downs it
  has not seen yet and applies what time decides. It is level-triggered: deciding at every
  sample, or only at the sampler's edges and at `next_wakeup()` (the scheduler's due-time
  set), comes to the same.

The model, per site and tunnel pair:

- **Flaps.** A flap is the primary being judged down after it was judged up — whichever path
  carries traffic, as BGP counts every withdrawal of a route — or a failed failback. At a flap
  the penalty decays to the flap's time and grows by `penalty_per_flap`, capped at
  `max_penalty` (`reuse · 2^(max_suppress / half_life)`). Above `suppress_threshold` the site
  is *suppressed*: "primary flapping, failback suppressed until ~HH:MM" is said once per
  episode.
- **Failover.** The primary judged down while it carries traffic: `FailOver` (the device
  usually did it already, by DPD; the caller confirms or makes it happen).
- **Failback** happens when, and only when: traffic is on the secondary, no failback is being
  verified, the primary has been up continuously for `stable_s` with at least
  `success_after` good samples in a row, the decayed penalty has fallen to `reuse_threshold`,
  `min_failback_interval_s` has passed since the last failback, and no manual hold is on.
- **Verification.** After `FailBack` the primary is watched for `verify_window_s`. The caller
  reports the playbook's end-to-end verify with `failback_result()`. A failed result, the
  primary judged down inside the window, or no result by its end rolls back (`RollBack`) and
  counts as a flap. A window that ends with a good result and no failure closes the episode
  ("stable").

An *episode* runs from the first flap until traffic is verified back on the primary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Path = Literal["primary", "secondary"]
NotifyKind = Literal[
    "failover", "suppressed", "failback", "rolled_back", "stable", "held", "released"
]


class DampingConfig(BaseModel):
    """Every parameter of §C5, with its default there (or, where §C5 gives none, ours)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fail_after: int = Field(
        default=3, ge=1, description="F: failed samples in a row that judge the primary down"
    )
    success_after: int = Field(
        default=4, ge=1, description="S: good samples in a row needed (with stable_s) to fail back"
    )
    stable_s: float = Field(
        default=300.0, ge=0, description="T_stable: primary continuously up before a failback"
    )
    half_life_s: float = Field(default=900.0, gt=0, description="H: penalty half-life")
    penalty_per_flap: float = Field(default=1000.0, gt=0, description="added at every flap")
    suppress_threshold: float = Field(
        default=2000.0, gt=0, description="above this the site is suppressed (flapping)"
    )
    reuse_threshold: float = Field(
        default=750.0, gt=0, description="failback needs the penalty decayed to this"
    )
    max_suppress_s: float = Field(
        default=3600.0, gt=0, description="longest suppression after the last flap; caps penalty"
    )
    min_failback_interval_s: float = Field(
        default=1800.0, ge=0, description="least time between two failbacks (not in §C5: ours)"
    )
    verify_window_s: float = Field(
        default=300.0, gt=0, description="T_verify: a failback must prove itself this long"
    )

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        if self.reuse_threshold >= self.suppress_threshold:
            raise ValueError("reuse_threshold must be below suppress_threshold")
        return self

    @property
    def max_penalty(self) -> float:
        """`reuse · 2^(max_suppress / half_life)`: from the cap, the penalty decays to reuse
        within `max_suppress_s`. Unbounded (infinite) when that is beyond a float, e.g. a
        one-second half-life with an hour's maximum suppression."""
        try:
            return self.reuse_threshold * math.exp2(self.max_suppress_s / self.half_life_s)
        except OverflowError:
            return math.inf


class _Flat(BaseModel):
    """A record flat enough for a Redis hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_fields(self) -> dict[str, str]:
        """Every field as a string: floats exactly (`repr`), booleans `1`/`0`, None empty."""
        fields: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                fields[name] = ""
            elif isinstance(value, bool):
                fields[name] = "1" if value else "0"
            elif isinstance(value, float):
                fields[name] = repr(value)
            else:
                fields[name] = str(value)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Self:
        """Inverse of `to_fields`. Missing fields take their defaults; unknown ones are ignored
        (a newer or older writer). A malformed value raises `pydantic.ValidationError`."""
        known = cls.model_fields
        data: dict[str, Any] = {k: (v or None) for k, v in fields.items() if k in known}
        return cls.model_validate(data)


class PathSamples(_Flat):
    """What the sampler saw of a path (written by the sampler only)."""

    judged_up: bool = True
    fail_streak: int = 0
    up_streak: int = 0
    up_since: float | None = None  # start of the current run of good samples
    last_at: float | None = None
    downs: int = 0  # how often the path was judged down (only grows)
    down_at: float | None = None  # when it was last judged down


class DampingState(_Flat):
    """What the failover reconciler decided (written by it only)."""

    active: Path = "primary"  # which path carries traffic, as far as we know
    penalty: float = 0.0  # value at `penalty_at`; decays from there
    penalty_at: float = 0.0
    suppressed: bool = False
    seen_downs: int = 0  # the `PathSamples.downs` already counted
    last_failback_at: float | None = None
    hold_until: float | None = None
    hold_indefinite: bool = False
    verify_until: float | None = None  # set while a failback is being verified
    verify_ok: bool = False  # the playbook's verify reported success for that failback
    probation_from: float | None = None  # a rollback restarts the stability window here
    episode_started_at: float | None = None
    episode_flaps: int = 0
    episode_notified: bool = False  # the "suppressed until" notice went out in this episode


@dataclass(frozen=True)
class FailOver:
    """Move traffic to the secondary (or confirm the device already did)."""

    reason: str


@dataclass(frozen=True)
class FailBack:
    """Move traffic back to the primary, then verify it end to end."""

    reason: str


@dataclass(frozen=True)
class RollBack:
    """The failback did not hold: move traffic back to the secondary."""

    reason: str


@dataclass(frozen=True)
class Notify:
    """Something to tell people. `at` is the time the text rounds to `~HH:MM`, if any."""

    kind: NotifyKind
    text: str
    at: float | None = None


Action = FailOver | FailBack | RollBack | Notify
Edge = Literal["failed", "recovered"]


# --- penalty arithmetic ---------------------------------------------------------------------


def penalty_now(state: DampingState, cfg: DampingConfig, now: float) -> float:
    """The penalty decayed to `now`: `P · 2^(-Δt/H)`."""
    elapsed = max(0.0, now - state.penalty_at)
    return state.penalty * math.exp2(-elapsed / cfg.half_life_s)


def reusable_at(state: DampingState, cfg: DampingConfig) -> float:
    """When the penalty decays to the reuse threshold (with no new flap)."""
    if state.penalty <= cfg.reuse_threshold:
        return state.penalty_at
    return state.penalty_at + cfg.half_life_s * math.log2(state.penalty / cfg.reuse_threshold)


def _hhmm(t: float, *, future: bool = True) -> str:
    """`t` as `HH:MM UTC`: a time to come rounded up (never promise earlier than the truth), a
    time gone by rounded down."""
    minute = math.ceil(t / 60.0) if future else math.floor(t / 60.0)
    return datetime.fromtimestamp(minute * 60.0, tz=UTC).strftime("%H:%M UTC")


def _held(state: DampingState, now: float) -> bool:
    return state.hold_indefinite or (state.hold_until is not None and now < state.hold_until)


# --- the sampler ----------------------------------------------------------------------------


def sample(
    obs: PathSamples, cfg: DampingConfig, now: float, ok: bool
) -> tuple[PathSamples, Edge | None]:
    """One judged sample of the path at `now`: the new record, and `failed` when this sample
    judged it down, `recovered` at the `success_after`-th good sample in a row. A sample older
    than the last one is ignored (another replica got there first)."""
    if obs.last_at is not None and now < obs.last_at:
        return obs, None
    if ok:
        # `recovered`: the S-th good sample in a row (the earliest a failback can be due).
        edge: Edge | None = "recovered" if obs.up_streak + 1 == cfg.success_after else None
        return obs.model_copy(
            update={
                "last_at": now,
                "fail_streak": 0,
                "up_streak": obs.up_streak + 1,
                "up_since": now if obs.up_since is None else obs.up_since,
                "judged_up": True,
            }
        ), edge
    obs = obs.model_copy(
        update={
            "last_at": now,
            "fail_streak": obs.fail_streak + 1,
            "up_streak": 0,
            "up_since": None,
        }
    )
    if obs.judged_up and obs.fail_streak >= cfg.fail_after:
        obs = obs.model_copy(update={"judged_up": False, "downs": obs.downs + 1, "down_at": now})
        return obs, "failed"
    return obs, None


# --- the decision ---------------------------------------------------------------------------


def _flap(state: DampingState, cfg: DampingConfig, at: float) -> tuple[DampingState, list[Action]]:
    """Count one flap at `at`: decay, add, cap; maybe suppress (and say so once per episode)."""
    penalty = min(penalty_now(state, cfg, at) + cfg.penalty_per_flap, cfg.max_penalty)
    state = state.model_copy(
        update={
            "penalty": penalty,
            "penalty_at": at,
            "episode_started_at": (
                at if state.episode_started_at is None else state.episode_started_at
            ),
            "episode_flaps": state.episode_flaps + 1,
        }
    )
    actions: list[Action] = []
    if penalty > cfg.suppress_threshold and not state.suppressed:
        state = state.model_copy(update={"suppressed": True})
        if not state.episode_notified:
            until = reusable_at(state, cfg)
            assert state.episode_started_at is not None
            actions.append(
                Notify(
                    "suppressed",
                    f"primary flapping, failback suppressed until ~{_hhmm(until)} "
                    f"({state.episode_flaps} flaps since "
                    f"{_hhmm(state.episode_started_at, future=False)}; "
                    "later if it keeps flapping)",
                    at=until,
                )
            )
            state = state.model_copy(update={"episode_notified": True})
    return state, actions


def _roll_back(
    state: DampingState, cfg: DampingConfig, at: float, why: str
) -> tuple[DampingState, list[Action]]:
    """A failed failback: back to the secondary, and it counts as a flap."""
    state = state.model_copy(
        update={
            "active": "secondary",
            "verify_until": None,
            "verify_ok": False,
            "probation_from": at,  # the primary must prove itself again from here
        }
    )
    state, actions = _flap(state, cfg, at)
    last = state.last_failback_at if state.last_failback_at is not None else at
    not_before = max(reusable_at(state, cfg), last + cfg.min_failback_interval_s)
    text = (
        f"failback to primary failed ({why}); rolled back to secondary, "
        f"next try not before ~{_hhmm(not_before)}"
    )
    return state, [RollBack(why), Notify("rolled_back", text, at=not_before), *actions]


def _fold_downs(
    state: DampingState, obs: PathSamples, cfg: DampingConfig, now: float
) -> tuple[DampingState, list[Action]]:
    """Count the primary's judged-down events not seen yet: each is a flap; the first one
    fails over (traffic on the primary) or rolls back (a failback being verified)."""
    new = obs.downs - state.seen_downs
    if new < 0:  # the sampler's record was lost (Redis lost data): start counting again
        return state.model_copy(update={"seen_downs": obs.downs}), []
    if new == 0:
        return state, []
    at = min(obs.down_at if obs.down_at is not None else now, now)
    state = state.model_copy(update={"seen_downs": obs.downs})
    why = f"primary failed {cfg.fail_after} checks in a row"
    if state.verify_until is not None:
        state, actions = _roll_back(state, cfg, at, why)
    elif state.active == "primary":
        state = state.model_copy(update={"active": "secondary"})
        state, flapped = _flap(state, cfg, at)
        actions = [FailOver(why), Notify("failover", f"{why}: traffic on secondary"), *flapped]
    else:
        state, actions = _flap(state, cfg, at)
    for _ in range(new - 1):  # more downs than one since we last looked
        state, more = _flap(state, cfg, at)
        actions += more
    return state, actions


def decide(
    state: DampingState, obs: PathSamples, cfg: DampingConfig, now: float
) -> tuple[DampingState, list[Action]]:
    """Everything the samples and the time decide at `now`: new downs (failover, rollback,
    flaps), the end of suppression or a hold, the end of a verify window, and a failback whose
    conditions all hold. Call it when the sampler saw an edge and when `next_wakeup` is due."""
    state, actions = _fold_downs(state, obs, cfg, now)
    if state.suppressed and now >= reusable_at(state, cfg):
        state = state.model_copy(update={"suppressed": False})
    if state.hold_until is not None and now >= state.hold_until:
        state = state.model_copy(update={"hold_until": None})
        actions.append(Notify("released", "manual failback hold expired"))

    if state.verify_until is not None and now >= state.verify_until:
        if not state.verify_ok:
            state, more = _roll_back(state, cfg, now, "no verify result within the window")
            return state, actions + more
        since = state.last_failback_at if state.last_failback_at is not None else now
        text = f"primary stable: traffic verified on primary since {_hhmm(since, future=False)}"
        if state.episode_flaps:
            text += f" ({state.episode_flaps} flaps in this episode)"
        state = state.model_copy(
            update={
                "verify_until": None,
                "verify_ok": False,
                "episode_started_at": None,
                "episode_flaps": 0,
                "episode_notified": False,
            }
        )
        return state, [*actions, Notify("stable", text)]

    probation = up_since(state, obs)
    if _may_fail_back(state, obs, cfg, now):
        assert probation is not None
        reason = f"primary up continuously since {_hhmm(probation, future=False)}"
        state = state.model_copy(
            update={
                "active": "primary",
                "last_failback_at": now,
                "verify_until": now + cfg.verify_window_s,
                "verify_ok": False,
            }
        )
        actions += [FailBack(reason), Notify("failback", f"failing back to primary: {reason}")]
    return state, actions


def up_since(state: DampingState, obs: PathSamples) -> float | None:
    """Start of the primary's probation: its current run of good samples, restarted by a
    rollback."""
    if obs.up_since is None:
        return None
    return max(obs.up_since, state.probation_from or obs.up_since)


def _may_fail_back(state: DampingState, obs: PathSamples, cfg: DampingConfig, now: float) -> bool:
    since = up_since(state, obs)
    return (
        state.active == "secondary"
        and state.verify_until is None
        and obs.judged_up
        and since is not None
        and now >= since + cfg.stable_s  # the same sums as next_wakeup's
        and obs.up_streak >= cfg.success_after
        and now >= reusable_at(state, cfg)
        and (
            state.last_failback_at is None
            or now >= state.last_failback_at + cfg.min_failback_interval_s
        )
        and not _held(state, now)
    )


def failback_result(
    state: DampingState, obs: PathSamples, cfg: DampingConfig, now: float, ok: bool
) -> tuple[DampingState, list[Action]]:
    """The failback playbook's verify at `now`. A failure rolls back at once (a flap); a
    success still has to last until the verify window ends. Ignored when nothing is being
    verified (a late or repeated report)."""
    if state.verify_until is None:
        return state, []
    if not ok:
        return _roll_back(state, cfg, now, "verify failed")
    state = state.model_copy(update={"verify_ok": True})
    return decide(state, obs, cfg, now)


def hold(state: DampingState, until: float | None) -> tuple[DampingState, list[Action]]:
    """Manual hold (`nopreempt`): no automatic failback until `until`, or until `release` when
    `until` is None. Failover and a verification under way are not affected."""
    if until is None:
        state = state.model_copy(update={"hold_indefinite": True, "hold_until": None})
        return state, [Notify("held", "automatic failback held until released")]
    state = state.model_copy(update={"hold_indefinite": False, "hold_until": until})
    return state, [Notify("held", f"automatic failback held until ~{_hhmm(until)}", at=until)]


def release(state: DampingState) -> tuple[DampingState, list[Action]]:
    """End a manual hold. A failback that is now allowed happens at the next `decide`."""
    state = state.model_copy(update={"hold_indefinite": False, "hold_until": None})
    return state, [Notify("released", "manual failback hold released")]


def next_wakeup(
    state: DampingState, obs: PathSamples, cfg: DampingConfig, now: float
) -> float | None:
    """The next time `decide` can decide something without a new sample, or None.

    While verifying: the end of the window. On the secondary with the primary up: the moment the
    last of the time conditions holds (stability window, penalty at reuse, minimum interval,
    hold expiry). None when only a new sample can change the outcome (primary down, too few good
    samples, an indefinite hold) or traffic is on a verified primary.
    """
    if state.verify_until is not None:
        return state.verify_until
    since = up_since(state, obs)
    if state.active != "secondary" or since is None or state.hold_indefinite:
        return None
    due = max(since + cfg.stable_s, reusable_at(state, cfg))
    if state.last_failback_at is not None:
        due = max(due, state.last_failback_at + cfg.min_failback_interval_s)
    if state.hold_until is not None:
        due = max(due, state.hold_until)
    return due if due > now else None
