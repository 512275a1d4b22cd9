"""The one stage of the fault tests: real ``dramatiq`` worker processes, a private Redis,
PostgreSQL and a real SMTP server, the levers to hurt them (kill -9, restart Redis, cut the
database off), and the counting afterwards.

* :class:`FaultRun` is what every fault test gets from the ``fault`` fixture
  (tests/faults/conftest.py): a migrated PostgreSQL schema of its own, a private Redis, the
  SMTP sink (or another transport), templates, a segment, customers with and without
  newsletter consent and a draft campaign, plus worker processes ready to start. It sends
  the campaign, waits for the sink or the campaign, prints the workers' logs when a test
  fails, stops everything, and counts what arrived (by Message-ID) and what the database says.
* :class:`Workers` starts ``python -m dramatiq mailer.worker.boot`` (or ``mailer worker``) in
  its own session so the whole process group can be killed with SIGKILL, exactly as a
  crashed machine would.
* :class:`RedisServer` runs a private ``redis-server`` on a free port (the shared one on
  6379 is never touched) that can be stopped and started again, empty.
* :class:`TcpProxy` sits between the workers and PostgreSQL; ``cut()`` resets every
  connection and refuses new ones until ``restore()``.
* :func:`campaign_stage` creates the customers (through the real consent ledger), the
  segment and the draft campaign, the way ``mailer campaigns create`` would.

Sink counts are by Message-ID, the one thing a duplicate shares with its original.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

import redis
import sqlalchemy as sa

from mailer import db
from mailer.app import App, set_app
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import Campaign, Delivery
from mailer.settings import PROJECT_ROOT, Settings
from mailer.worker.actors import setup
from tests.campaign_support import NEWS_KIND, newsletter_templates
from tests.conftest import PG_URL, make_settings
from tests.smtp_sink import SMTPSink, free_port

#: Longest any fault test waits for its campaign to finish, seconds (a failure, not a threshold).
FINISH_TIMEOUT_S = 240
#: Longest a fault test waits for the sink to receive a share of the campaign, seconds.
PROGRESS_TIMEOUT_S = 120
#: How long a worker may take to stop after SIGTERM before it is killed, seconds.
STOP_TIMEOUT_S = 30


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def log_tail(path: Path, label: str, chars: int = 3000) -> str:
    """The last ``chars`` characters of a worker's log under a ``--- label`` line, for a failure message."""
    return f"--- {label} (last {chars} chars)\n{path.read_text(errors='replace')[-chars:]}"


# -- message ids at the sink ------------------------------------------------------------------
_parser = BytesHeaderParser()


def message_ids(sink) -> collections.Counter:
    """How many times each Message-ID reached the sink."""
    return collections.Counter(_parser.parsebytes(r.raw)["Message-ID"] for r in list(sink.received))


def recipients(sink) -> collections.Counter:
    return collections.Counter(rcpt for r in list(sink.received) for rcpt in r.rcpt_tos)


# -- PostgreSQL schema ------------------------------------------------------------------------
class PgSchema:
    """A fresh, migrated schema; ``url(host, port)`` reaches it directly or through a proxy."""

    def __init__(self):
        self.base = PG_URL
        self.name = "f_" + uuid.uuid4().hex[:12]
        self.admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as c:
            c.execute(sa.text(f"CREATE SCHEMA {self.name}"))
        db.upgrade(self.url())

    def url(self, port: int | None = None) -> str:
        base = self.base if port is None else self.base.replace(":5432/", f":{port}/")
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        db.dispose_engines()
        with self.admin.connect() as c:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {self.name} CASCADE"))
        self.admin.dispose()


# -- worker processes -------------------------------------------------------------------------
@dataclass
class Workers:
    """Worker processes (``dramatiq mailer.worker.boot`` or ``mailer worker``) sharing one environment."""

    env: dict
    log_dir: Path
    threads: int = 1
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, **extra_env) -> subprocess.Popen:
        """One ``dramatiq mailer.worker.boot`` process of ``threads`` threads (``extra_env`` on top)."""
        return self._spawn(["-m", "dramatiq", "mailer.worker.boot", "--processes", "1", "--threads", str(self.threads),
                            "--queues", "transactional", "bulk", "default", "--worker-shutdown-timeout", "3000"],
                           extra_env)

    def start_mailer_worker(self, processes: int, **extra_env) -> subprocess.Popen:
        """``mailer worker -p PROCESSES -t THREADS``: the command an operator runs."""
        return self._spawn(["-m", "mailer.cli", "worker", "-p", str(processes), "-t", str(self.threads),
                            "--worker-shutdown-timeout", "3000"], extra_env)

    def _spawn(self, args: list[str], extra_env: dict) -> subprocess.Popen:
        """Start ``python ARGS`` in a session of its own, logging to ``worker-N.log``."""
        n = len(self.procs)
        env = {**self.env, **{k: str(v) for k, v in extra_env.items()}}
        with open(self.log_dir / f"worker-{n}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, *args], cwd=self.log_dir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group (master, worker process, metrics fork)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill9(proc)

    def full_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))

    def logs(self) -> str:
        return "\n".join(log_tail(p, p.name) for p in sorted(self.log_dir.glob("worker-*.log")))


def worker_env(*, database_url: str, broker_url: str, smtp_url: str, templates_dir: Path, segments_dir: Path,
               **settings) -> dict:
    """The environment of a worker process: MAILER_* settings tuned for a test that must end soon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update({
        "PYTHONPATH": str(PROJECT_ROOT),
        "MAILER_DATABASE_URL": database_url, "MAILER_BROKER_URL": broker_url, "MAILER_SMTP_URL": smtp_url,
        "MAILER_SECRET_KEY": "fault-test-secret", "MAILER_TEMPLATES_DIR": str(templates_dir),
        "MAILER_SEGMENTS_DIR": str(segments_dir), "MAILER_FREQUENCY_CAP": "0",
        "MAILER_LOG_LEVEL": "WARNING", "MAILER_BATCH_SIZE": "100",
        # A killed worker's messages come back after 3 s instead of 60 s...
        "MAILER_BROKER_HEARTBEAT_MS": "3000", "MAILER_BROKER_MAINTENANCE_CHANCE": "100000",
        # ...its leases expire after 6 s, and the sweeper looks every second.
        "MAILER_LEASE_S": "6", "MAILER_SWEEP_INTERVAL_S": "1", "MAILER_SWEEP_STALE_S": "30",
        "MAILER_RETRY_MIN_BACKOFF_MS": "200", "MAILER_RETRY_MAX_BACKOFF_MS": "2000",
    })
    env.update({f"MAILER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


# -- a private Redis ----------------------------------------------------------------------------
class RedisServer:
    """``redis-server`` on a free port without persistence: a restart comes back empty."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.log_dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ping, 20, 0.05, "redis-server to accept connections")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- a TCP proxy that can cut the database off -------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` resets all connections and refuses new ones."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or not self._open.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _reset(s)
                with self._lock:
                    self._conns.discard(s)

    def cut(self) -> None:
        """The database is unreachable: every open connection is reset, new ones are refused."""
        self._open.clear()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            _reset(s)

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop = True
        self.cut()
        self._listener.close()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.close()


# -- the campaign -------------------------------------------------------------------------------
SEGMENT = "fault_newsletter"


@dataclass
class Stage:
    settings: object
    campaign_id: int
    consenting: dict[int, str]      # customer id -> address
    without: dict[int, str]         # customers who never consented


def campaign_stage(settings, tmp: Path, *, consenting: int, without: int = 0, domain: str = "example.com",
                   address=None) -> Stage:
    """Customers, consent, a test newsletter, a segment and a draft campaign in the database."""
    address = address or (lambda i: f"c{i:05d}@{domain}")
    app = App(settings)
    ok: dict[int, str] = {}
    no: dict[int, str] = {}
    with app.session() as s:
        for i in range(consenting + without):
            email = address(i)
            c = get_or_create(s, settings, email, locale="en", first_name=f"N{i}")
            s.flush()
            if i < consenting:
                consent.append(s, settings, customer=c, purpose="newsletter", action="granted",
                               source="signup_form", proof=consent.Proof(form_id="fault", wording="Yes"))
                ok[c.id] = c.email
            else:
                no[c.id] = c.email
    with app.session() as s:
        campaign = campaigns.create(s, settings, app.renderer, name="fault test", template=NEWS_KIND,
                                    segment=SEGMENT, data={"headline": "Fault tolerance"}, tracking=False)
        campaign_id = campaign.id
    app.close()
    return Stage(settings, campaign_id, ok, no)


def write_segment(segments_dir: Path) -> Path:
    segments_dir.mkdir(parents=True, exist_ok=True)
    path = segments_dir / f"{SEGMENT}.toml"
    path.write_text('description = "Everyone with newsletter consent (fault tests)"\npurpose = "newsletter"\n',
                    encoding="utf-8")
    return segments_dir


def send_campaign(settings, campaign_id: int) -> None:
    """``mailer campaigns send``: running, and the fan-out message on the (Redis) broker."""
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    try:
        with app.session() as s:
            campaigns.send(s, settings, campaign_id)
        campaign_actors.start(app, campaign_id)
    finally:
        broker.close()
        app.close()
        set_app(previous)


def campaign_status(settings, campaign_id: int) -> tuple[str, dict[str, int]]:
    """(campaign status, {delivery status: count})."""
    with db.session_scope(settings) as s:
        status = s.get(Campaign, campaign_id).status.value
        # One GROUP BY over the campaign's deliveries (ix_deliveries_campaign_status).
        rows = s.execute(sa.select(Delivery.status, sa.func.count()).where(Delivery.campaign_id == campaign_id)
                         .group_by(Delivery.status)).all()
    return status, {st.value: n for st, n in rows}


def deliveries(settings, campaign_id: int) -> list:
    """Every delivery of the campaign (id, customer_id, to_address, status, message_id, reason, attempts...)."""
    with db.session_scope(settings) as s:
        return list(s.execute(sa.select(Delivery.id, Delivery.customer_id, Delivery.to_address, Delivery.to_hash,
                                        Delivery.status, Delivery.message_id, Delivery.reason,
                                        Delivery.attempts, Delivery.smtp_reply)
                              .where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)).all())


def broker_backlog(redis_url: str) -> int:
    """Messages the Redis broker still holds (queued, delayed or unacknowledged) in its database."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(client.hlen(key) for key in client.scan_iter("dramatiq:*.msgs"))
    finally:
        client.close()


# -- one fault test's run -----------------------------------------------------------------------
@dataclass
class FaultRun:
    """A draft campaign on a stage of its own, the workers that will send it, and the counting.

    Made by the ``fault`` fixture; ``with run.live():`` around the part where workers run
    prints their logs and the campaign's figures if a wait or an assertion fails there, and
    stops the workers, the sink and the proxy on the way out, so what is counted afterwards
    can no longer change.
    """

    settings: Settings
    stage: Stage
    workers: Workers
    redis: RedisServer
    sink: SMTPSink | None = None
    proxy: TcpProxy | None = None
    _stopped: bool = False

    @property
    def campaign_id(self) -> int:
        return self.stage.campaign_id

    @property
    def consenting(self) -> dict[int, str]:
        return self.stage.consenting

    @property
    def without(self) -> dict[int, str]:
        return self.stage.without

    def received(self) -> int:
        """How many mails the SMTP sink has accepted so far."""
        return len(self.sink.received)

    def send(self) -> None:
        send_campaign(self.settings, self.campaign_id)

    def wait_received(self, count: int, what: str) -> int:
        """Wait until the sink has accepted ``count`` mails; returns how many it has."""
        wait_for(lambda: self.received() >= count, PROGRESS_TIMEOUT_S, what=what)
        return self.received()

    def wait_completed(self) -> None:
        wait_for(lambda: self.status()[0] == "completed", FINISH_TIMEOUT_S, 0.5, "the campaign to complete")

    def status(self) -> tuple[str, dict[str, int]]:
        return campaign_status(self.settings, self.campaign_id)

    def deliveries(self) -> list:
        return deliveries(self.settings, self.campaign_id)

    def message_ids(self) -> collections.Counter:
        return message_ids(self.sink)

    def broker_backlog(self) -> int:
        return broker_backlog(self.redis.url)

    @contextlib.contextmanager
    def live(self):
        try:
            yield self
        except AssertionError:
            print(self.workers.logs())
            print(self.status())
            raise
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop the workers, then the sink and the proxy (once; the fixture calls it again)."""
        if self._stopped:
            return
        self._stopped = True
        self.workers.stop_all()
        if self.sink is not None:
            self.sink.stop()
        if self.proxy is not None:
            self.proxy.close()


def duplicates(counts: collections.Counter) -> int:
    """Mails received more than once (by Message-ID), beyond the first of each."""
    return sum(n - 1 for n in counts.values())


def fault_run(fault_dir: Path, schema: PgSchema, redis_server: RedisServer, *, consenting: int, without: int = 0,
              threads: int = 2, transport_url: str | None = None, settings: dict | None = None,
              worker_settings: dict | None = None, database_proxy: bool = False) -> FaultRun:
    """Templates, segment, customers and a draft campaign, and the workers' environment.

    ``transport_url`` replaces the SMTP sink (``outbox://DIR``); ``settings`` apply to this
    process and the workers alike, ``worker_settings`` only to the workers;
    ``database_proxy`` puts a :class:`TcpProxy` between the workers and PostgreSQL.
    """
    settings, worker_settings = settings or {}, worker_settings or {}
    sink = SMTPSink().start() if transport_url is None else None
    smtp_url = sink.url if sink is not None else transport_url
    templates = newsletter_templates(fault_dir)
    segments = write_segment(fault_dir / "segments")
    proxy = TcpProxy("127.0.0.1", 5432) if database_proxy else None
    try:
        test_settings = make_settings(database_url=schema.url(), broker_url=redis_server.url, smtp_url=smtp_url,
                                      templates_dir=templates, segments_dir=segments,
                                      secret_key="fault-test-secret", **settings)
        stage = campaign_stage(test_settings, fault_dir, consenting=consenting, without=without)
        env = worker_env(database_url=schema.url(proxy.port if proxy else None), broker_url=redis_server.url,
                         smtp_url=smtp_url, templates_dir=templates, segments_dir=segments,
                         **{**settings, **worker_settings})
    except BaseException:
        if sink is not None:
            sink.stop()
        if proxy is not None:
            proxy.close()
        raise
    workers = Workers(env, fault_dir / "logs", threads=threads)
    return FaultRun(test_settings, stage, workers, redis_server, sink, proxy)

