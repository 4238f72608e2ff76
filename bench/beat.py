"""HA beat under faults: gap and duplicate sends per scenario: `python bench/beat.py`.

Three workers with ``master_beat`` (default timing: ttl 4 s, check 1 s), a
1 s schedule, Redis broker, PostgreSQL leases. Scenarios: crash (kill -9 of
the sending worker), graceful (SIGTERM), outage (PostgreSQL stopped for
ttl + 1 s under the master, then started again).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.beatlib import (  # noqa: E402
    draw,
    duplicates,
    fmt_gaps,
    not_injected_note,
    run_system,
)
from bench.peers import ours  # noqa: E402
from tests.support.servers import PgServer, RedisServer  # noqa: E402

TTL = 4.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default="crash,graceful,outage")
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    redis, pg = RedisServer(), PgServer()

    def outage() -> None:
        pg.stop()
        time.sleep(TTL + 1)
        pg.start()

    try:
        with tempfile.TemporaryDirectory(prefix="cm-beat-") as tmp:
            system = ours(Path(tmp), redis.url, pg.url())
            gaps = run_system(system, args.scenarios.split(","), args.repeats, outage)
            dups = duplicates(system)
            if args.png:
                draw([system], args.png)
    finally:
        redis.close()
        pg.close()
    print(
        "\nHA beat gap after a fault, seconds (gap = first send after - last send before - "
        "1 s period)"
    )
    print(f"{'scenario':<10}{'n':>3} {'median':>7} {'min':>7} {'max':>7}")
    for kind in gaps.scenarios():
        note = not_injected_note(gaps.not_injected.get(kind, 0))
        print(f"{kind:<10}{fmt_gaps(gaps.values.get(kind, []))}{note}")
    print(f"duplicate sends (two sends < 0.5 s apart) over the whole run: {dups}")
    if args.png:
        print(f"timeline written to {args.png}")


if __name__ == "__main__":
    main()
