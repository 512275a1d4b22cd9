"""Shared stage for the pipeline benchmarks (not a benchmark itself).

* :func:`machine` describes the machine (cores, CPU model, memory, Python, load, date).
* :class:`Database` is a migrated SQLite file or a fresh PostgreSQL schema, dropped after.
* :func:`populate` writes N customers with newsletter consent in bulk (Core/ORM bulk
  inserts, a valid hash chain), far faster than the ledger's one-event-per-call API;
  everything after that (campaign create/send, fan-out, ``send_batch``) is the product's
  own path.
* :class:`Worker` runs ``python -m dramatiq mailer.worker.boot --processes 1`` with mailer's
  settings in its environment and reads its process tree's CPU time and RSS from /proc.
* :func:`dkim_keys` makes a fresh RSA-2048 and Ed25519 key in a temp dir.
* :func:`uvicorn_server` starts ``uvicorn mailer.web.app:app_from_env --factory --workers 1``
  on a free localhost port and waits for ``/healthz`` (bench/signup.py, bench/webhooks.py).

Redis: the benchmarks use database :data:`REDIS_DB` (8) and flush it before and after.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from mailer import db  # noqa: E402
from mailer.instance_secrets import address_hash_salt
from mailer.settings import Settings  # noqa: E402

PG_URL = os.environ.get("MAILER_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Redis database the benchmarks own (flushed before and after each run).
REDIS_DB = int(os.environ.get("MAILER_BENCH_REDIS_DB", "8"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
TEMPLATE = "newsletter/seasonal_sale"
SEGMENT = "newsletter_all"
LOCALES = ("en", "en", "en", "pl", "fr", "zh-TW", "ko", "ar")
SECRET = "bench-secret-key-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the machine ------------------------------------------------------------------------------
def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def print_machine(title: str) -> dict:
    m = machine()
    print(f"== {title}")
    print(f"   machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gb']} GB, Python {m['python']}; "
          f"load {m['load']}; {m['date']}")
    return m


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- /proc readings -----------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (threads included)."""
    return sum(cpu_split(pid))


def memory_detail(pid: int) -> dict:
    """Where a process's resident memory is, for bench/memory.py: /proc/<pid>/smaps_rollup
    (``Rss``, ``Anonymous``: heap, arenas, stacks; the rest is mapped files such as the
    interpreter and libraries), its thread count, and its open sockets and SQLite files."""
    out: dict = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    out["Threads"] = status_kb(pid, "Threads")
    sockets = db_files = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            sockets += target.startswith("socket:")
            db_files += target.endswith((".db", ".sqlite"))
    except OSError:
        pass
    out["sockets"], out["db_files"] = sockets, db_files
    return out


def format_memory_detail(d: dict) -> str:
    if not d:
        return "no detail"
    anon = d.get("Anonymous", 0)
    return (f"Rss {d.get('Rss', 0) / 1024:.1f} MB = anonymous {anon / 1024:.1f} MB + files "
            f"{(d.get('Rss', 0) - anon) / 1024:.1f} MB; {d.get('Threads', 0)} threads, {d.get('sockets', 0)} sockets, "
            f"{d.get('db_files', 0)} open SQLite files")


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM...)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- services -----------------------------------------------------------------------------------
def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


#: Longest wait for a started HTTP server to answer /healthz, seconds.
SERVER_START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``uvicorn`` process of the benchmark's own."""

    proc: subprocess.Popen
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def uvicorn_server(env: dict, *, port: int | None = None, extra_args: tuple[str, ...] = ()) -> Iterator[Server]:
    """``uvicorn mailer.web.app:app_from_env --factory --workers 1`` on 127.0.0.1, up and answering.

    ``env`` is the server's whole environment (mailer's settings; this checkout is put first
    on its ``PYTHONPATH``).  Yields once ``/healthz`` answers; terminates the server on the way out.
    """
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "mailer.web.app:app_from_env", "--factory",
                             "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", "--no-access-log", *extra_args],
                            env={**env, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)})
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)  # nosec B310 - localhost
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("server did not start") from None
                time.sleep(0.2)
        yield Server(proc, port)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


class Database:
    """A migrated database of the benchmark's own: ``sqlite`` (a temp file) or ``postgresql`` (a schema)."""

    def __init__(self, kind: str, tmp: Path):
        self.kind = kind
        self.schema = None
        if kind == "sqlite":
            tmp.mkdir(parents=True, exist_ok=True)
            self.url = f"sqlite:///{tmp / 'bench.db'}"
        else:
            self.schema = "bench_" + uuid.uuid4().hex[:10]
            admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
            admin.dispose()
            sep = "&" if "?" in PG_URL else "?"
            self.url = f"{PG_URL}{sep}options=-csearch_path%3D{self.schema}"
        db.upgrade(self.url)

    def drop(self) -> None:
        db.dispose_engines()
        if self.schema:
            admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
            admin.dispose()


def databases(requested: str) -> list[str]:
    kinds = ["sqlite", "postgresql"] if requested == "both" else [requested]
    if "postgresql" in kinds and not reachable("127.0.0.1", 5432):
        print("   PostgreSQL on 127.0.0.1:5432 cannot be reached: skipping it")
        kinds.remove("postgresql")
    return kinds


# -- data -------------------------------------------------------------------------------------
def populate(settings: Settings, n: int, *, chunk: int = 5000, start: int = 0) -> None:
    """``n`` customers, each with current newsletter consent (a valid consent hash chain)."""
    from mailer.addresses import email_hash
    from mailer.consent.ledger import GENESIS, chain_hash
    from mailer.models import ConsentEvent, Customer

    salt = address_hash_salt(settings)
    now = dt.datetime.now(dt.timezone.utc)
    iso = now.isoformat(timespec="microseconds")
    wording = "Yes, send me the newsletter"
    wording_sha = hashlib.sha256(wording.encode()).hexdigest()
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        last = conn.execute(sa.select(ConsentEvent.seq, ConsentEvent.hash).order_by(ConsentEvent.seq.desc())
                            .limit(1)).first()
        base_id = conn.execute(sa.select(sa.func.coalesce(sa.func.max(Customer.id), 0))).scalar_one()
    seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
    for lo in range(start, start + n, chunk):
        hi = min(lo + chunk, start + n)
        customers, events = [], []
        for i in range(lo, hi):
            cid = base_id + (i - start) + 1
            email = f"customer{i:07d}@example{i % 97}.com"
            h = email_hash(email, salt)
            customers.append(dict(id=cid, email=email, email_hash=h, first_name=f"First{i}", last_name=f"Last{i}",
                                  locale=LOCALES[i % len(LOCALES)], timezone="Europe/Warsaw", currency="EUR",
                                  total_spent=0, orders_count=0, attributes={}, created_at=now, updated_at=now))
            seq += 1
            fields = {"seq": seq, "subject_hash": h, "purpose": "newsletter", "action": "granted",
                      "basis": "consent", "source": "signup_form", "occurred_at": iso, "recorded_at": iso,
                      "form_id": "bench", "wording_sha256": wording_sha, "wording_version": None,
                      "confirmed_at": None, "ip_digest": None, "user_agent_digest": None,
                      "customer_id": cid, "chain_format": 2}
            digest = chain_hash(prev, fields)
            events.append(dict(id=seq, seq=seq, customer_id=cid, subject_hash=h, purpose="newsletter",
                               action="granted", basis="consent", source="signup_form", occurred_at=now,
                               recorded_at=now, form_id="bench", wording=wording, wording_sha256=wording_sha,
                               prev_hash=prev, hash=digest, chain_format=2))
            prev = digest
        with engine.begin() as conn:
            conn.execute(sa.insert(Customer), customers)
            conn.execute(sa.insert(ConsentEvent), events)
            # consent_state is derived by the database's trigger on consent_events INSERT.
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("customers", "consent_events", "consent_state"):
                conn.execute(sa.text(f"ANALYZE {table}"))
            # Explicit ids were inserted: move the sequences past them.
            for table in ("customers", "consent_events"):
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))"))


def dkim_keys(directory: Path) -> tuple[Path, Path]:
    from mailer.message.dkim import generate_keys

    return generate_keys(directory / "dkim")


def bench_settings(database_url: str, smtp_url: str, keys: tuple[Path, Path] | None, *, ed25519: bool = False,
                   **overrides) -> Settings:
    values = dict(database_url=database_url, broker_url=REDIS_URL, smtp_url=smtp_url, secret_key=SECRET,
                  frequency_cap=0, from_address="Northwind Shop <shop@example.com>")
    if keys is not None:
        values.update(dkim_domain="example.com", dkim_rsa_key=str(keys[0]))
        if ed25519:
            values.update(dkim_ed25519_key=str(keys[1]))
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict:
    """The MAILER_* environment a worker needs to rebuild ``settings``."""
    from mailer.settings import ENV_VARS

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    for name, var in ENV_VARS.items():
        value = getattr(settings, name)
        if isinstance(value, bool):
            env[var] = "1" if value else "0"
        elif isinstance(value, tuple):
            env[var] = ",".join(value)
        else:
            env[var] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


# -- campaigns --------------------------------------------------------------------------------
def create_campaign(settings: Settings, name: str) -> int:
    """``mailer campaign create`` for the shipped seasonal-sale newsletter (tracking on)."""
    from mailer.app import App
    from mailer.campaigns import service as campaigns

    app = App(settings)
    with app.session() as s:
        c = campaigns.create(s, settings, app.renderer, name=name, template=TEMPLATE, segment=SEGMENT,
                             data=app.renderer.sample(TEMPLATE))
        cid = c.id
    return cid


def send_campaign(settings: Settings, campaign_id: int) -> float:
    """``mailer campaign send``: running, fan-out enqueued on Redis; returns the time it was sent."""
    from mailer.app import App, set_app
    from mailer.campaigns import fanout as campaign_actors
    from mailer.campaigns import service as campaigns
    from mailer.worker.actors import setup

    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    try:
        t0 = time.time()
        with app.session() as s:
            campaigns.send(s, settings, campaign_id)
        campaign_actors.start(app, campaign_id)
        return t0
    finally:
        set_app(previous)


def delivery_counts(settings: Settings, campaign_id: int | None = None) -> dict[str, int]:
    from mailer.models import Delivery

    stmt = sa.select(Delivery.status, sa.func.count()).group_by(Delivery.status)
    if campaign_id is not None:
        stmt = stmt.where(Delivery.campaign_id == campaign_id)
    with db.session_scope(settings) as s:
        return {st.value: n for st, n in s.execute(stmt).all()}


# -- the worker ---------------------------------------------------------------------------------
@dataclass
class Worker:
    """One ``dramatiq mailer.worker.boot`` command with ``processes`` worker processes."""

    settings: Settings
    log_dir: Path
    threads: int = 8
    processes: int = 1
    cpus: set[int] | None = None
    queues: tuple[str, ...] = ("transactional", "bulk", "default")
    extra_env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    index: int = 0
    #: The module ``dramatiq`` boots (bench/notice_timeline.py wraps mailer.worker.boot to timestamp notices).
    boot: str = "mailer.worker.boot"

    def start(self) -> "Worker":
        env = settings_env(self.settings)
        env.setdefault("MAILER_LOG_LEVEL", "INFO")
        env.update(self.extra_env)
        self.log_path = self.log_dir / f"worker-{self.index}-{uuid.uuid4().hex[:6]}.log"
        log = open(self.log_path, "wb")
        cpus = self.cpus

        def pre() -> None:
            os.setsid()
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", self.boot, "--processes", str(self.processes),
             "--threads", str(self.threads), "--queues", *self.queues, "--worker-shutdown-timeout", "5000"],
            cwd=self.log_dir, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pre)
        log.close()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until every worker process logged that it is ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if text.count("is ready for action") >= self.processes:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc else []

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the dramatiq master), not the master itself."""
        return [p for p in self.pids() if p != self.proc.pid]

    def cpu_s(self) -> float:
        """CPU seconds of the worker processes (the master only supervises; it is counted too)."""
        return sum(cpu_s(p) for p in self.pids())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the whole process tree."""
        parts = [cpu_split(p) for p in self.pids()]
        return sum(u for u, _ in parts), sum(s for _, s in parts)

    def rss_kb(self) -> int:
        return sum(status_kb(p, "VmRSS") for p in self.worker_pids())

    def peak_rss_kb(self) -> int:
        """Largest peak RSS (VmHWM) among the worker processes."""
        return max((status_kb(p, "VmHWM") for p in self.worker_pids()), default=0)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def wait_for_sink(sink, target: int, *, timeout_s: float, worker: Worker | None = None,
                  on_tick=None) -> dict:
    """Poll the sink until it has ``target`` messages (or time runs out); returns its last stats."""
    deadline = time.monotonic() + timeout_s
    stats = sink.stats()
    while stats["messages"] < target and time.monotonic() < deadline:
        if worker is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
        time.sleep(0.2)
        stats = sink.stats()
        if on_tick:
            on_tick(stats)
    return stats


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
