"""Benchmark: the stall between a worker host's death and its work resuming.

Run: python bench/takeover.py [--profile default|tuned|off|all] [--recipients 3000] [--threads 1]

Each run, on the fault tests' stage (tests/faults/harness.py: a fresh PostgreSQL schema,
a private ``redis-server`` on a free port, the aiosmtpd sink, a consenting segment and a
campaign): two ``dramatiq mailer.worker.boot`` processes (``host-a``, ``host-b``) send the
campaign; a quarter of the way in, ``host-a``'s process group is killed with SIGKILL.
What it held is read at once (tests/faults/takeover_support.py: the Dramatiq messages it
had taken and not acknowledged, the deliveries they name, its leases), and the script
measures

* **stall**: from the kill until none of that is held by ``host-a`` any more (its taken
  messages back in their queues, its leases expired and claimed by ``host-b``);
* **done**: from the kill until every delivery ``host-a`` held is final (this adds the
  queue in front of the requeued messages, so it depends on the campaign's size);
* duplicates at the sink (by Message-ID) and the campaign's end state.

Profiles (the settings the workers run with):

* ``default``: mailer's defaults (``MAILER_LEASE_S=120``, ``MAILER_HEARTBEAT_S=5``,
  ``MAILER_SWEEP_INTERVAL_S=15``, Dramatiq's heartbeat 60 s at 1,000 per million).
* ``tuned``: ``MAILER_LEASE_S=20``, ``MAILER_HEARTBEAT_S=2``, ``MAILER_SWEEP_INTERVAL_S=5``.
* ``off``: the defaults with ``MAILER_HEARTBEAT_S=0`` (no heartbeat: what mailer did
  before issue 22): only Dramatiq's own requeue or ``MAILER_SWEEP_STALE_S`` (300 s)
  bring the taken messages back.

Wall-clock figures (what an operator waits), dominated by the configured periods, not by
CPU; write the load average next to them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import loadavg, print_machine

from tests.faults.harness import PgSchema, RedisServer, duplicates, fault_run
from tests.faults.takeover_support import all_final, held_by, wait_back_in_work

PROFILES = {
    "default": {"lease_s": 120, "heartbeat_s": 5, "sweep_interval_s": 15, "sweep_stale_s": 300,
                "broker_heartbeat_ms": 60_000, "broker_maintenance_chance": 1000},
    "tuned": {"lease_s": 20, "heartbeat_s": 2, "sweep_interval_s": 5, "sweep_stale_s": 300,
              "broker_heartbeat_ms": 60_000, "broker_maintenance_chance": 1000},
    "off": {"lease_s": 120, "heartbeat_s": 0, "sweep_interval_s": 15, "sweep_stale_s": 300,
            "broker_heartbeat_ms": 60_000, "broker_maintenance_chance": 1000},
}
#: Longest the script waits for a takeover or the campaign, seconds.
WAIT_S = 900


def run_profile(profile: str, recipients: int, threads: int) -> dict:
    settings = PROFILES[profile]
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        fault_dir = Path(tmp)
        (fault_dir / "logs").mkdir()
        schema = PgSchema()
        redis_server = RedisServer(fault_dir / "logs")
        redis_server.start()
        run = None
        try:
            run = fault_run(fault_dir, schema, redis_server, consenting=recipients, threads=threads,
                            worker_settings={**settings, "retry_min_backoff_ms": 5000,
                                             "retry_max_backoff_ms": 60_000})
            a = run.workers.start(MAILER_WORKER_NAME="host-a")
            run.workers.start(MAILER_WORKER_NAME="host-b")
            time.sleep(max(2, settings["heartbeat_s"] + 1))  # both have beaten once
            run.send()
            run.wait_received(recipients // 4, "a quarter of the campaign")
            # Kill host-a while it holds work (taken messages or leases), as a dead host would.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                peek = held_by(run.settings, run.redis.url, "host-a")
                if peek.leased_ids or peek.queued_ids:
                    break
                time.sleep(0.05)
            run.workers.kill9(a)
            killed = time.monotonic()
            if settings["heartbeat_s"] <= 0:
                time.sleep(2)  # no heartbeat rows: host-a is found as the broker id gone silent in Redis
            held = held_by(run.settings, run.redis.url, "host-a")
            try:
                stall_s = wait_back_in_work(run.settings, run.redis.url, "host-a", held, since=killed,
                                            timeout_s=WAIT_S)
            except AssertionError:
                stall_s = None  # still held after WAIT_S (profile "off": only the rows were swept)
            ids = held.queued_ids | held.leased_ids
            deadline = killed + WAIT_S
            while not all_final(run.settings, ids) and time.monotonic() < deadline:
                time.sleep(0.2)
            done_s = time.monotonic() - killed
            run.wait_completed()
            status, by_status = run.status()
            dups = duplicates(run.message_ids())
        finally:
            if run is not None:
                run.stop()
            redis_server.kill()
            schema.drop()
    return {"profile": profile, "settings": settings, "messages": held.message_count,
            "queued": len(held.queued_ids), "leased": len(held.leased_ids), "stall_s": stall_s, "done_s": done_s,
            "status": status, "by_status": by_status, "duplicates": dups, "load": loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print_machine("takeover: a worker killed with SIGKILL mid-campaign")
    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    for name in profiles:
        r = run_profile(name, args.recipients, args.threads)
        s = r["settings"]
        stall = f"> {WAIT_S}" if r["stall_s"] is None else f"{r['stall_s']:.1f}"
        print(f"   {name:8s} lease {s['lease_s']} s, heartbeat {s['heartbeat_s']} s, sweep {s['sweep_interval_s']} s, "
              f"stale {s['sweep_stale_s']} s, Dramatiq heartbeat {s['broker_heartbeat_ms']} ms: "
              f"held {r['messages']} messages ({r['queued']} queued deliveries) + {r['leased']} leases; "
              f"stall {stall} s, "
              f"its mail all final after {r['done_s']:.1f} s; "
              f"campaign {r['status']} {r['by_status']}, {r['duplicates']} duplicate(s); load {r['load']}")


if __name__ == "__main__":
    main()
