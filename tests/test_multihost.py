"""Many machines, for real: two hosts in network namespaces share one PostgreSQL, one Redis and one relay.

The test makes a bridge and two network namespaces ("hosts" a and b), starts a PostgreSQL
and a Redis of its own on the bridge address (never the machine's shared ones) and an SMTP
sink there, and runs one ``mailer worker`` in each namespace (real Dramatiq on Redis).
The sink tells the hosts apart by the peer address. What must hold (docs/delivery.md,
"Running on many machines"):

(a) a campaign is sent exactly once across both hosts (counted at the sink by delivery
    id), and both hosts took part;
(b) ``MAILER_RELAY_RATE`` holds across the hosts: over any run of calendar seconds at most
    the mails in flight (one per worker thread) above the rate;
(c) one host killed (SIGKILL of its process group) mid-send: the other completes the
    campaign, nothing is lost, and the copies the relay may have of the dead host's
    in-flight mails are the only duplicates (at most one per worker thread);
(d) one host's link cut mid-send: ``mailer consent withdraw`` for a customer that host was
    mailing completes (within a generous multiple of the configured timeouts: a liveness
    bound, not a speed target), and the sink accepts no mail to them after it.

Small timeouts (``SETTINGS``) keep it to a minute or two. It skips only where network
namespaces are not permitted (not root, or ``ip netns add`` fails), with a
"needs-service" reason, so ``.ci/run`` fails on that skip (and under
``MAILER_REQUIRE_SERVICES=1`` the test fails instead of skipping).
"""

from __future__ import annotations

import collections
import contextlib
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, literal_column, select

from mailer import db
from mailer.consent import ledger
from mailer.models import ConsentEvent, ConsentState
from mailer.settings import PROJECT_ROOT
from tests.campaign_support import newsletter_templates
from tests.conftest import REQUIRE, make_settings
from tests.faults.harness import campaign_stage, campaign_status, deliveries, send_campaign, worker_env, write_segment
from tests.multihost_support import (
    BridgeRedis,
    HostSink,
    HostWorker,
    Network,
    PgCluster,
    PrimedCommand,
    max_excess,
    namespaces_permitted,
)

pytestmark = [pytest.mark.slow, pytest.mark.smtp]

#: Threads per host (one ``mailer worker -p 1 -t THREADS`` per namespace).
THREADS = 2
#: The timeouts every host runs with (docs/delivery.md, "Running on many machines"), small so
#: the test ends soon; the names are the settings' (MAILER_<NAME>).
SETTINGS = dict(
    db_idle_in_transaction_s=3,        # a silent session inside a transaction is ended after 3 s...
    db_lock_timeout_s=30,              # ...well before a consent write gives up waiting (Busy)
    db_keepalive_s=2,
    db_worker_statement_timeout_s=20,
    lease_s=5, sweep_interval_s=1, sweep_stale_s=10,
    broker_heartbeat_ms=3000, broker_maintenance_chance=100_000,
    batch_size=5,                      # many small send_batch messages, so both hosts get some
)
#: Generous multiple of the configured timeouts that bounds each recovery (liveness, not speed).
LIVENESS_FACTOR = 10
#: The recovery each bound multiplies: a withdrawal behind a cut-off host waits for the server
#: to end that host's silent session; a dead host's work comes back by lease, sweep or requeue.
WITHDRAW_BOUND_S = LIVENESS_FACTOR * SETTINGS["db_idle_in_transaction_s"]
TAKEOVER_BOUND_S = LIVENESS_FACTOR * (SETTINGS["lease_s"] + SETTINGS["sweep_interval_s"]
                                      + min(SETTINGS["sweep_stale_s"], SETTINGS["broker_heartbeat_ms"] / 1000))
#: Longest a healthy campaign of this test may take to complete, seconds (a failure, not a threshold).
FINISH_S = 180


@dataclass
class Cluster:
    network: Network
    pg: PgCluster
    redis: BridgeRedis
    sink: HostSink
    log_dir: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = namespaces_permitted()
    if why is not None:
        msg = f"needs-service: network namespaces ({why}); the multi-host test runs as root, as .ci/run does"
        if REQUIRE:
            pytest.fail(msg + " (MAILER_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    log_dir = tmp_path_factory.mktemp("multihost")
    with contextlib.ExitStack() as stack:
        network = Network()
        stack.callback(network.close)
        pg = PgCluster(network, log_dir)
        stack.callback(pg.stop)
        redis = BridgeRedis(network, log_dir)
        stack.callback(redis.stop)
        sink = HostSink(network)
        stack.callback(sink.stop)
        yield Cluster(network, pg, redis, sink, log_dir)


@dataclass
class Run:
    """One test's campaign on the cluster, and the two hosts' workers that send it."""

    cluster: Cluster
    settings: object
    env: dict
    campaign_id: int
    consenting: dict[int, str]
    without: dict[int, str]
    workers: dict[str, HostWorker]

    @property
    def sink(self) -> HostSink:
        return self.cluster.sink

    def host(self, name: str):
        return self.cluster.network.hosts[name]

    def send(self) -> float:
        t = time.time()
        send_campaign(self.settings, self.campaign_id)
        return t

    def wait(self, predicate, timeout_s: float, what: str, interval_s: float = 0.1):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; campaign {self.status()}")

    def status(self) -> tuple[str, dict[str, int]]:
        return campaign_status(self.settings, self.campaign_id)

    def completed(self) -> bool:
        return self.status()[0] == "completed"

    def delivery_ids(self) -> set[str]:
        return {str(r.id) for r in deliveries(self.settings, self.campaign_id)}


@pytest.fixture
def start(cluster, tmp_path):
    """``start(consenting=N, without=M, **settings)``: a fresh database and Redis, a draft
    campaign, and both hosts' workers ready; everything stopped (and links restored) after."""
    runs: list[Run] = []

    def make(*, consenting: int, without: int = 0, **overrides) -> Run:
        cluster.redis.flush()
        cluster.sink.reset()
        url = cluster.pg.database()
        templates = newsletter_templates(tmp_path)
        segments = write_segment(tmp_path / "segments")
        smtp_url = cluster.sink.url()
        values = {**SETTINGS, **overrides}
        settings = make_settings(database_url=url, broker_url=cluster.redis.url, smtp_url=smtp_url,
                                 templates_dir=templates, segments_dir=segments, secret_key="fault-test-secret",
                                 **values)
        stage = campaign_stage(settings, tmp_path, consenting=consenting, without=without)
        db.dispose_engines()
        env = worker_env(database_url=url, broker_url=cluster.redis.url, smtp_url=smtp_url, templates_dir=templates,
                         segments_dir=segments, **values)
        env["MAILER_LOG_LEVEL"] = "INFO"
        workers = {}
        run = Run(cluster, settings, env, stage.campaign_id, stage.consenting, stage.without, workers)
        runs.append(run)
        for name, host in cluster.network.hosts.items():
            workers[name] = HostWorker.start(host, env, tmp_path, threads=THREADS)
        for w in workers.values():
            w.wait_ready()
        return run

    yield make
    for run in runs:
        for host in cluster.network.hosts.values():
            cluster.network.restore(host)
        cluster.sink.release()
        for w in run.workers.values():
            w.stop()
            print(w.tail())
    db.dispose_engines()


def _per_second(times: list[float]) -> list[int]:
    counts = collections.Counter(math.floor(t) for t in times)
    return [counts.get(k, 0) for k in range(min(counts), max(counts) + 1)] if counts else []


def test_a_campaign_is_sent_exactly_once_across_both_hosts(start):
    # Given a campaign to 60 consenting customers (and 5 who never consented), and a worker on each host
    run = start(consenting=60, without=5)
    a, b = run.host("a"), run.host("b")
    # When it is sent, the first replies waiting until both hosts have a mail in flight (so both
    # take part however fast one of them would drain 60 mails alone)
    run.sink.hold()
    run.send()
    run.wait(lambda: {p for _, _, p in run.sink.held()} == {a.address, b.address}, FINISH_S,
             "both hosts to have a mail in flight")
    run.sink.release()
    run.wait(run.completed, FINISH_S, "the campaign to complete")
    # Then every delivery reached the sink exactly once (by delivery id), nobody without consent got one
    status, counts = run.status()
    assert counts == {"sent": 60}
    by_delivery = run.sink.by_delivery()
    assert set(by_delivery) == run.delivery_ids() and set(by_delivery.values()) == {1}
    assert not {a.rcpt for a in run.sink.accepted()} & set(run.without.values())
    # And both hosts took part
    by_host = run.sink.by_host()
    print(f"split between the hosts: {dict(by_host)}")
    assert set(by_host) == {a.address, b.address}


def test_the_shared_rate_limit_holds_across_both_hosts(start):
    # Given MAILER_RELAY_RATE=8 on both hosts and a campaign of 48
    rate = 8
    run = start(consenting=48, relay_rate=rate)
    # When it is sent
    run.send()
    run.wait(run.completed, FINISH_S, "the rate-limited campaign to complete")
    accepted = run.sink.accepted()
    per_second = _per_second([a.at for a in accepted])
    excess = max_excess(per_second, rate)
    print(f"mails per calendar second: {per_second}; most above {rate}/s over any run of seconds: {excess}; "
          f"hosts {dict(run.sink.by_host())}")
    # Then both hosts sent, each mail once
    assert len({a.peer for a in accepted}) == 2
    assert sorted(run.sink.by_delivery().values()) == [1] * 48
    # And over any run of calendar seconds the sink saw at most the mails in flight (one per
    # worker thread of both hosts) above the rate: two hosts with a limiter each would double it
    assert excess <= 2 * THREADS, per_second


def test_a_killed_host_loses_nothing_and_duplicates_at_most_one_mail_per_thread(start):
    # Given a campaign of 80 and a worker on each host
    run = start(consenting=80)
    a, b = run.host("a"), run.host("b")
    # When host b is killed (SIGKILL of its process group) with mails in flight (data sent, no reply yet)
    run.sink.hold(b)
    run.send()
    run.wait(lambda: run.sink.held() and len(run.sink.accepted()) >= 10, FINISH_S, "host b mid-send")
    run.workers["b"].kill9()
    killed_at = time.time()
    in_flight = [d for d, _, _ in run.sink.held()]
    # Then host a completes the campaign within a generous multiple of the lease and sweep timeouts
    run.wait(run.completed, TAKEOVER_BOUND_S, "host a to complete the campaign after the kill", 0.2)
    done_after_s = time.time() - killed_at
    status, counts = run.status()
    assert counts == {"sent": 80}
    # And nothing is lost: every delivery reached the sink; the relay may also hold the dead
    # host's in-flight copies (the duplicate window), at most one per worker thread
    copies = run.sink.by_delivery() + collections.Counter(in_flight)
    assert set(copies) == run.delivery_ids()
    duplicates = sum(n - 1 for n in copies.values())
    assert len(in_flight) <= THREADS and duplicates <= THREADS and max(copies.values()) <= 2
    after = sorted(x.at for x in run.sink.accepted() if x.at >= killed_at)
    gaps = [t1 - t0 for t0, t1 in zip([killed_at, *after], after, strict=False)]
    print(f"kill -9 of host b with {len(in_flight)} mail(s) in flight: completed {done_after_s:.1f} s later "
          f"(bound {TAKEOVER_BOUND_S:.0f} s); longest stall at the sink {max(gaps, default=0):.1f} s; "
          f"duplicates {duplicates}; sent by a after the kill {len(after)}")
    assert all(x.peer == a.address for x in run.sink.accepted() if x.at > killed_at + 1)


def test_a_cut_link_does_not_freeze_a_withdrawal_and_no_mail_goes_out_after_it(start, cluster):
    # Given a campaign of 60 and a worker on each host
    run = start(consenting=60)
    b = run.host("b")
    withdraw = PrimedCommand(run.env)  # `mailer`, imported and waiting for its arguments
    # (the relay holds every reply, so host a cannot drain the campaign before host b takes part)
    run.sink.hold()
    run.send()
    # When host b is mid-send to a customer (the mail's data sent, the relay's reply not yet)
    _, email, _ = run.wait(lambda: next((h for h in run.sink.held() if h[2] == b.address), None), FINISH_S,
                           "host b mid-send")
    # And host b's link is cut (its veth down): its sessions go silent, holding their locks
    cluster.network.cut(b)
    run.sink.release()  # the relay answers b's mails in flight; the answers are lost on the cut link
    # And a withdrawal for that customer is recorded with `mailer consent withdraw`
    started = time.time()
    try:
        cli = withdraw.run(["consent", "withdraw", email, "--purpose", "newsletter", "--source", "admin"],
                           timeout_s=WITHDRAW_BOUND_S + 60)
    finally:
        withdraw.kill()
    took_s = time.time() - started
    print(f"`mailer consent withdraw` for {email} behind cut-off host b: {took_s:.1f} s from start to exit "
          f"(bound {WITHDRAW_BOUND_S} s); {cli.stdout.strip()} {cli.stderr.strip()[-500:]}")
    # Then it committed, within a generous multiple of the idle-in-transaction timeout (not hours)
    assert cli.returncode == 0 and "recorded:" in cli.stdout
    assert took_s <= WITHDRAW_BOUND_S
    customer_id = next(cid for cid, e in run.consenting.items() if e == email)
    with db.session_scope(run.settings) as s:
        assert s.get(ConsentState, (customer_id, "newsletter")).granted is False
        assert not ledger.has_consent(s, run.settings, customer_id, "newsletter")
        # The withdrawal's event: when the CLI made it (just before it waited for the row) and
        # when its transaction committed (the server's commit timestamp; same machine, same clock).
        recorded_at, committed_at = s.execute(
            select(ConsentEvent.recorded_at, func.pg_xact_commit_timestamp(literal_column("xmin")))
            .where(ConsentEvent.customer_id == customer_id, ConsentEvent.action == "withdrawn")).one()
    waited_s = (committed_at - recorded_at).total_seconds()
    print(f"the withdrawal waited {waited_s:.1f} s for its consent row and committed "
          f"{committed_at.timestamp() - started:.1f} s after the command started")
    # And once host b's link is back and the campaign has completed, the sink accepted no
    # mail to that customer after the withdrawal committed
    cluster.network.restore(b)
    run.wait(run.completed, FINISH_S, "the campaign to complete after the link is back", 0.2)
    to_them = [x for x in run.sink.accepted() if x.rcpt == email]
    print(f"mails to {email} at the sink: {[(x.peer, round(x.at - committed_at.timestamp(), 2)) for x in to_them]} "
          f"s after the withdrawal committed; campaign {run.status()}")
    assert to_them and all(x.at < committed_at.timestamp() for x in to_them)
    # And nothing was lost to the cut, and the cut duplicated at most one mail per thread of host b
    copies = run.sink.by_delivery()
    assert set(copies) == run.delivery_ids()
    twice = {d: [(x.peer, round(x.at - committed_at.timestamp(), 2)) for x in run.sink.accepted() if x.delivery == d]
             for d, n in copies.items() if n > 1}
    assert sum(n - 1 for n in copies.values()) <= THREADS, twice


def _ci_skip_check(tmp_path: Path, report: str) -> subprocess.CompletedProcess:
    """.ci/run's check of the test report (its inline Python), run on ``report``."""
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    check = script[script.index("<<'PY'\n") + len("<<'PY'\n"):script.index("\nPY\n")]
    junit = tmp_path / "junit.xml"
    junit.write_text(f"<testsuites><testsuite>{report}</testsuite></testsuites>")
    return subprocess.run([sys.executable, "-c", check, str(junit)], capture_output=True, text=True, timeout=60)


def test_ci_fails_when_the_multihost_test_skips_or_does_not_run(tmp_path):
    # Given test reports where the multi-host test ran, skipped for want of namespaces, or is missing
    ran = '<testcase classname="tests.test_multihost" name="test_a_campaign_is_sent_exactly_once_across_both_hosts"/>'
    skipped = ('<testcase classname="tests.test_multihost" name="test_a_campaign_is_sent_exactly_once_across_both_hosts">'
               '<skipped message="needs-service: network namespaces (not root)"/></testcase>')
    absent = '<testcase classname="tests.test_other" name="test_x"/>'
    # When .ci/run checks each / Then only the one where it ran passes
    assert _ci_skip_check(tmp_path, ran).returncode == 0
    for report in (skipped, absent):
        result = _ci_skip_check(tmp_path, report)
        assert result.returncode == 1 and "FAIL" in result.stdout, result.stdout
