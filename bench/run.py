"""Run the benchmarks: tunnelwarden beside its peers, same machine, same run, same Redis.

    python bench/run.py --quick          # smoke run (< 4 min, fewer sites), one table
    python bench/run.py --quick --json   # the headline figures as one JSON document
    python bench/run.py                  # full run; writes docs/benchmarks.md
    python bench/run.py --at HEAD        # measure the code of a commit (an export of it),
                                         # not the work tree

It starts its own redis-server (the one ``bot.embedded.find_redis_server`` finds) on a unix
socket and flushes it between contenders. Exit status: 0 when every benchmark ran, 1 when
one broke (slowness is never a failure), 2 for a usage problem (the full run needs arq and
saq: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import footprint, hostile, latency, peers, redaction, report, scale, throughput
from bench.common import ROOT, PrivateRedis, machine, median, private_redis, versions


@dataclass(frozen=True)
class Plan:
    events: int  # no-op events per throughput run
    ceiling_events: int
    repeats: int
    variants: bool  # the extra rows (our concurrency 10 / log level WARNING, arq poll 0.01)
    rtt_events: int
    changes: int
    storm_rounds: int
    footprint_events: int
    ready_runs: int
    help_runs: int
    storm_sites: int = 1000  # the renumbering storm and its peer (bench.scale)
    detect_sites: int = 1000  # connections the ARM watcher sweeps
    healthy_s: float = 30.0  # steady state measured before the drops


QUICK = Plan(2000, 10_000, 1, False, 500, 100, 1, 10_000, 1, 3, 150, 50, 5.0)
FULL = Plan(10_000, 100_000, 3, True, 2000, 500, 10, 10_000, 5, 10, 1000, 1000, 30.0)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_throughput(server: PrivateRedis, plan: Plan, missing: list[str]) -> dict[str, Any]:
    runs: dict[str, list[throughput.Drain]] = {}
    contenders: list[tuple[str, Callable[[], throughput.Drain]]] = [
        ("tunnelwarden", lambda: throughput.tunnelwarden(server, plan.events))
    ]
    if "saq" not in missing:
        contenders.append(("saq", lambda: throughput.saq(server, plan.events)))
    if "arq" not in missing:
        contenders.append(("arq", lambda: throughput.arq(server, plan.events)))
    if plan.variants:
        contenders += [
            (
                "tunnelwarden concurrency=4",
                lambda: throughput.tunnelwarden(
                    server, plan.events, "tunnelwarden c4", worker__concurrency="4"
                ),
            ),
            (
                "tunnelwarden log level WARNING",
                lambda: throughput.tunnelwarden(
                    server, plan.events, "tunnelwarden warn", log__level="WARNING"
                ),
            ),
        ]
        if "arq" not in missing:
            contenders.append(
                (
                    "arq poll_delay=0.01",
                    lambda: throughput.arq(server, plan.events, poll_delay=0.01),
                )
            )
    ceilings: list[dict[str, float]] = []
    for rep in range(plan.repeats):
        # rotate the order so no contender always runs first (or last) on a warm machine
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for name, measure in order:
            say(f"  throughput {rep + 1}/{plan.repeats}: {name} ({plan.events} events)")
            runs.setdefault(name, []).append(measure())
        say(f"  throughput {rep + 1}/{plan.repeats}: ceiling ({plan.ceiling_events} events)")
        ceilings.append(throughput.ceiling(server, plan.ceiling_events))
    rows = {}
    for name, drains in runs.items():
        rows[name] = {
            "rate": median([d.rate for d in drains]),
            "rates": [round(d.rate, 1) for d in drains],
            "startup_s": median([d.startup_s for d in drains]),
            "cpu_ms_per_job": median([d.cpu_ms_per_job for d in drains]),
            "redis_cpu_ms_per_job": median([d.redis_cpu_ms_per_job for d in drains]),
            "settings": drains[0].extra,
        }
    ceiling = {k: median([c[k] for c in ceilings]) for k in ceilings[0]}
    return {"events": plan.events, "repeats": plan.repeats, "rows": rows, "ceiling": ceiling}


def build(plan: Plan, quick: bool) -> tuple[dict[str, Any], list[str]]:
    missing = [name for name in ("saq", "arq") if not peers.available(name)]
    for name in missing:
        say(f"note: {name} is not installed (pip install -e '.[bench]'); its rows are skipped")
    results: dict[str, Any] = {"quick": quick, "missing": missing, "plan": plan.__dict__}
    errors: list[str] = []

    def step(name: str, work: Callable[[], Any]) -> None:
        say(f"{name} ...")
        started = time.perf_counter()
        try:
            results[name] = work()
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            say(traceback.format_exc())
        say(f"{name}: {time.perf_counter() - started:.0f}s")

    results["machine"] = machine()
    results["versions"] = versions()
    with private_redis() as server:
        results["redis"] = {"version": server.version(), "binary": server.binary}
        step("throughput", lambda: run_throughput(server, plan, missing))
        step("round_trips", lambda: throughput.round_trips(server, plan.rtt_events))
        if not quick:
            step("redis_benchmark", lambda: throughput.redis_benchmark(server))

        def lat() -> dict[str, Any]:
            server.flush()
            return latency.measure(server.url, plan.changes, plan.storm_rounds)

        step("latency", lat)
        results["polling_peer"] = latency.polling_peer()
        step(
            "footprint",
            lambda: footprint.measure(
                server, plan.footprint_events, plan.ready_runs, plan.help_runs
            ),
        )
        step("hostile", lambda: hostile.measure(server, 2.0 if quick else 10.0))
        if quick:
            say(
                f"note: --quick runs the storm with {plan.storm_sites} sites (not 1,000) and "
                f"detection with {plan.detect_sites} connections (not 1,000)"
            )

        def storm() -> dict[str, Any]:
            server.flush()
            return scale.storm(server.url, plan.storm_sites)

        step("storm", storm)
        step("storm_peer", lambda: scale.storm_peer(plan.storm_sites))

        def detect() -> dict[str, Any]:
            server.flush()
            return scale.detection(server.url, plan.detect_sites, healthy_s=plan.healthy_s)

        step("detection", detect)
    step("redaction", lambda: redaction.run(quick))
    return results, errors


def headline(results: dict[str, Any]) -> dict[str, Any]:
    rows = results.get("throughput", {}).get("rows", {})
    ceiling = results.get("throughput", {}).get("ceiling", {})
    seq = results.get("latency", {}).get("sequential", {}).get("overhead", {})
    fp = results.get("footprint", {})
    hostile_r = results.get("hostile", {})
    red = results.get("redaction", {})
    storm = results.get("storm", {})
    peer = results.get("storm_peer", {})
    detect = results.get("detection", {})
    rss_1000 = detect.get("idle_rss_mb") if detect.get("connections") == 1000 else None

    def rate(name: str) -> float | None:
        row = rows.get(name)
        return round(row["rate"], 1) if row else None

    def num(value: Any, digits: int = 3) -> float | None:
        return round(float(value), digits) if value is not None else None

    return {
        "quick": bool(results.get("quick")),  # --quick: fewer sites in storm and detection
        "throughput": {
            "tunnelwarden": rate("tunnelwarden"),
            "saq": rate("saq"),
            "arq": rate("arq"),
            "ceiling": num(ceiling.get("drain_batched"), 1),
        },
        "latency": {k: num(seq.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")},
        "footprint": {
            "rss_idle_mb": num(fp.get("rss_idle_mb"), 1),
            "rss_10k_mb": num(fp.get("rss_10k_mb"), 1),
            "help_s": num(fp.get("help_s")),
            "ready_s": num(fp.get("ready_s")),
            "rss_idle_1000_mb": num(rss_1000, 1),
            "rss_idle_scale_mb": num(detect.get("idle_rss_mb"), 1),
            "cpu_s_per_s_scale": num(detect.get("cpu_s_per_s"), 4),
        },
        "storm": {
            "sites": storm.get("sites"),
            "floor_s": num(storm.get("floor_s"), 1),
            "completion_s": num(storm.get("completion_s"), 1),
            "throttled": storm.get("throttled"),
            "connected": storm.get("connected"),
        },
        "storm_peer": {
            "completion_s": num(peer.get("completion_s"), 1),
            "throttled": peer.get("throttled"),
            "calls": peer.get("calls"),
        },
        "detection": {
            "connections": detect.get("connections"),
            "watcher_p99_s": num(detect.get("watcher_p99_s"), 1),
            "probe_p99_s": num(detect.get("probe_p99_s"), 1),
            "arm_reads_per_s": num(detect.get("arm_reads_per_s"), 2),
        },
        "flood": {
            "healthz_idle_p99_ms": num(hostile_r.get("idle", {}).get("p99_ms"), 2),
            "healthz_flood_p99_ms": num(hostile_r.get("flood", {}).get("p99_ms"), 2),
            "healthz_flood_max_ms": num(hostile_r.get("flood", {}).get("max_ms"), 2),
            "attack_requests": hostile_r.get("attack_requests"),
        },
        "redaction": {
            "redact_1mb_s": num(red.get("redact_1mb_s"), 4),
            "attack_bytes": red.get("attack_bytes"),
            "old_regex_attack_s": num(red.get("old_regex_attack_s")),
            "new_attack_s": num(red.get("new_attack_s"), 5),
        },
    }


def _export(commit: str) -> tuple[Path, str]:
    """The tree of ``commit`` in a temporary directory (git archive; the repo is untouched)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True
    )
    if sha.returncode != 0:
        raise SystemExit(f"--at: unknown commit {commit!r}")
    target = Path(tempfile.mkdtemp(prefix="twbench-src-"))
    archive = subprocess.run(["git", "archive", sha.stdout.strip()], cwd=ROOT, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target, sha.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, under 4 minutes (fewer sites)"
    )
    parser.add_argument("--json", action="store_true", help="print the headline figures as JSON")
    parser.add_argument("--at", metavar="COMMIT", help="measure an export of this commit")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="where the full run writes its report (default docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    if args.at:
        source, sha = _export(args.at)
        env = dict(os.environ, BENCH_CODE_COMMIT=sha)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(source), str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        rest = [a for a in (argv or sys.argv[1:]) if a != "--at" and a != args.at]
        rest += ["--output", str(args.output.resolve())]
        say(f"measuring commit {sha} (exported to {source})")
        try:
            done = subprocess.run([sys.executable, "-m", "bench.run", *rest], env=env, cwd=source)
        finally:
            shutil.rmtree(source, ignore_errors=True)
        return done.returncode
    if not args.quick:
        missing = [name for name in ("saq", "arq") if not peers.available(name)]
        if missing:
            say(f"the full run needs {' and '.join(missing)}: pip install -e '.[bench]'")
            return 2
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    results, errors = build(plan, args.quick)
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["headline"] = headline(results)
    if args.json:
        print(json.dumps(results["headline"]))
    else:
        print(report.table(results))
    if not args.quick and not errors:
        args.output.write_text(report.markdown(results))
        raw = args.output.resolve().parents[1] / "bench" / "last-full-run.json"
        raw.write_text(json.dumps(results, indent=1, default=str) + "\n")
        say(f"wrote {args.output} and {raw}")
    for error in errors:
        say(f"BROKEN: {error}")
    say(f"done in {results['elapsed_s']:.0f}s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
