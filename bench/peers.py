"""Our HA beat against celery-redbeat and single-beat, side by side on one local Redis.

`python bench/peers.py [--repeats 3] [--png bench/out/peers.png]`

Each system runs three instances of a 1 s beat schedule; the sender is killed
(kill -9 of its whole process group) or sent SIGTERM, then restarted. The
peers are installed from PyPI into bench/.venv-peers on first use, and run
both with their documented defaults and tuned to our lease length (4 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.beatlib import (  # noqa: E402
    CAP,
    ROOT,
    System,
    draw,
    duplicates,
    fmt_gaps,
    median_or_cap,
    not_injected_note,
    run_system,
)
from tests.support.cluster import foreign_environ, worker_argv  # noqa: E402
from tests.support.servers import PgServer, RedisServer  # noqa: E402

VENV = ROOT / "bench" / ".venv-peers"
PEERS = ["celery-redbeat>=2.2", "single-beat>=0.6", "celery>=5.3", "redis>=4.5", "packaging"]


def peers_python() -> str:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS], check=True)
    return str(py)


def clean_environ() -> dict[str, str]:
    """This shell's environment without Celery's, ours or the peers' settings."""
    env = dict(os.environ)
    for name in [*foreign_environ(env), *(k for k in env if k.startswith(("PEER_", "SINGLE_")))]:
        del env[name]
    return env


def ours(tmp: Path, redis_url: str, db_url: str) -> System:
    env = clean_environ()
    journal = tmp / "ours.jsonl"
    env.update(
        PYTHONPATH=str(ROOT),
        JOURNAL_FILE=str(journal),
        JOURNAL_LOCKS="",
        JOURNAL_BROKER_URL=redis_url,
        CELERY_MASTER_DATABASE_URL=db_url,
        CELERY_MASTER_BEAT="1",
    )
    return System(
        "celery-master",
        lambda i: worker_argv(f"w{i}"),
        env,
        journal,
        ready=lambda log: "ready." in log.read_text(errors="replace"),
    )


def peer(tmp: Path, name: str, redis_url: str, tuned: bool, redbeat: bool) -> System:
    py = peers_python()
    journal = tmp / f"{name}.jsonl"
    env = {
        **clean_environ(),
        "PYTHONPATH": str(ROOT),
        "PEER_BROKER_URL": redis_url,
        "PEER_JOURNAL": str(journal),
    }
    beat = [py, "-m", "celery", "-A", "bench.apps.peer_app", "beat", "-l", "info"]
    if redbeat:
        env.update(PEER_REDBEAT="1")
        if tuned:
            env.update(PEER_REDBEAT_LOCK_TIMEOUT="4", PEER_MAX_INTERVAL="1")
        return System(name, lambda i: [*beat, "-s", str(tmp / f"{name}-{i}.db")], env, journal)
    env.update(
        SINGLE_BEAT_REDIS_SERVER=redis_url,
        SINGLE_BEAT_IDENTIFIER=f"bench-{name}",
        SINGLE_BEAT_LOG_LEVEL="info",
    )
    if tuned:
        env.update(
            SINGLE_BEAT_LOCK_TIME="4",
            SINGLE_BEAT_INITIAL_LOCK_TIME="8",
            SINGLE_BEAT_HEARTBEAT_INTERVAL="1",
        )
    single = str(Path(py).parent / "single-beat")
    return System(name, lambda i: [single, *beat, "-s", str(tmp / f"{name}-{i}.db")], env, journal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default="crash,graceful")
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    redis, pg = RedisServer(), PgServer()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="cm-peers-") as tmp_name:
            tmp = Path(tmp_name)
            systems = [
                ours(tmp, redis.url_for(1), pg.url()),
                peer(tmp, "redbeat (defaults)", redis.url_for(2), False, True),
                peer(tmp, "redbeat (lock 4s)", redis.url_for(3), True, True),
                peer(tmp, "single-beat (defaults)", redis.url_for(4), False, False),
                peer(tmp, "single-beat (lock 4s)", redis.url_for(5), True, False),
            ]
            for system in systems:
                print(f"running {system.name} ...", flush=True)
                results.append((system, run_system(system, scenarios, args.repeats)))
            if args.png:
                draw(systems, args.png)
    finally:
        redis.close()
        pg.close()
    print(
        "\nbeat gap after a fault, seconds (gap = first send after - last send before - 1 s "
        "period; 3 instances, 1 s schedule, local Redis; n = faults injected)"
    )
    print(
        f"{'system':<24}{'scenario':<10}{'n':>3} {'median':>7} {'min':>7} {'max':>7}  "
        f"{'dups':>4}  {'ours/theirs':>11}"
    )
    ours_median = {k: median_or_cap(v) for k, v in results[0][1].values.items()}
    for system, gaps in results:
        for kind in gaps.scenarios():
            values = gaps.values.get(kind, [])
            theirs, mine = median_or_cap(values), ours_median.get(kind)
            if system is results[0][0] or theirs is None or mine is None:
                ratio = "-"
            else:
                ratio = f"{mine / theirs:.2f}" if theirs else "inf"
            note = not_injected_note(gaps.not_injected.get(kind, 0))
            print(
                f"{system.name:<24}{kind:<10}{fmt_gaps(values)}  {duplicates(system):>4}  "
                f"{ratio:>11}{note}"
            )
    print(
        f"dups: pairs of sends < 0.5 s apart over the whole run; >{int(CAP)}: no failover "
        f"within {int(CAP)} s (counted as {int(CAP)} s in the ratio); no fault injected: "
        "no live instance was sending when the fault was due (e.g. redbeat's defaults keep "
        "a killed instance's lock for 1500 s), so there was nothing to kill"
    )
    if args.png:
        print(f"timeline written to {args.png}")


if __name__ == "__main__":
    main()
