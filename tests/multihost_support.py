"""The stage of the multi-host test (tests/test_multihost.py): two "hosts" in network namespaces.

* :class:`Network` makes a bridge in this (the root) namespace and two namespaces, each
  joined to it by a veth pair, on a private /24 (the bridge is ``.1``, the hosts ``.2`` and
  ``.3``). ``cut(host)`` sets the host's veth down (its link is cut: packets are dropped,
  nobody is told) and ``restore(host)`` brings it back. Every name carries this process's
  pid, so leftovers of a test process that was itself killed are removed by the next run
  (:func:`remove_leftovers`), and ``close()`` removes everything, whatever the test did.
* :class:`PgCluster` is a PostgreSQL of the test's own: ``initdb`` in a temporary directory
  (as the ``postgres`` user), listening only on the bridge address, a free port, trust
  authentication for the bridge's subnet, commit timestamps on (``pg_xact_commit_timestamp``:
  when a withdrawal committed, on this machine's clock); ``database()`` makes a fresh
  database from a migrated template.
* :class:`BridgeRedis` is a ``redis-server`` of the test's own on the bridge address.
* :class:`HostSink` is a real SMTP server (aiosmtpd) on the bridge address that records, per
  accepted message, its ``X-Mailer-Delivery`` id, recipient, the sending host (the peer
  address tells the namespaces apart) and the time of the ``250``; ``hold(host)`` keeps
  that host's (or every host's) messages waiting for their reply (a mail in flight, its data sent and its
  reply not yet come) until ``release()``.
* :class:`HostWorker` is ``mailer worker`` inside a host's namespace, in a process group of
  its own (``kill9()`` is a dead host); :class:`PrimedCommand` is a ``mailer`` command whose
  interpreter has started and imported mailer, waiting for its arguments (so what is timed
  is the command, not Python's start-up).
* :func:`namespaces_permitted` says whether this process may make namespaces at all (root
  and ``ip netns add`` working); only then does the test run.

Nothing here touches the machine's shared PostgreSQL or Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.controller import Controller

from mailer.settings import PROJECT_ROOT
from tests.faults.harness import log_tail

#: PostgreSQL 15's server programs (Debian's layout).
PG_BIN = Path(os.environ.get("MAILER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: The system user the test's own PostgreSQL runs as (initdb refuses root).
PG_USER = "postgres"
#: Longest the test waits for its own PostgreSQL or Redis to accept connections, seconds.
SERVICE_START_S = 60
#: Longest a worker may take to log that it is ready, seconds (imports on a loaded machine).
WORKER_READY_S = 90
#: Prefixes of everything :class:`Network` creates (namespaces, links), followed by the pid.
NS_PREFIX, BRIDGE_PREFIX, VETH_PREFIX = "mailer-mh-", "mhb", "mhv"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def namespaces_permitted() -> str | None:
    """None when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "the ip program (iproute2) is not installed"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> None:
    """Namespaces and links a killed test process left behind (its pid is in their names)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"{re.escape(NS_PREFIX)}(\d+)-\S+", line)
        if m and not _pid_alive(int(m.group(1))):
            _ip("netns", "del", m.group(0), check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        m = re.match(rf"\d+: (({BRIDGE_PREFIX}|{VETH_PREFIX})(\d+)[ab]?)[@:]", line)
        if m and not _pid_alive(int(m.group(3))):
            _ip("link", "del", m.group(1), check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no interface of this machine uses yet."""
    used = [ipaddress.ip_interface(a).network for a in
            re.findall(r"inet (\S+)", _ip("-o", "-4", "addr", "show", check=False).stdout)]
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(200, 207)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.200.0.0/13 subnet for the test's bridge")


@dataclass
class Host:
    """One namespace: its name, its address on the bridge and the root-side end of its veth."""

    name: str
    ns: str
    address: str
    veth: str

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *args]


class Network:
    """A bridge and two namespaces ("a" and "b") on a private subnet; see the module docstring."""

    def __init__(self):
        remove_leftovers()
        pid = os.getpid()
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.bridge = f"{BRIDGE_PREFIX}{pid}"
        self.address = str(addresses[0])
        self.hosts: dict[str, Host] = {}
        self._made: list[tuple[str, str]] = []  # ("netns"|"link", name), removed in reverse
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(("a", "b")):
                host = Host(name, f"{NS_PREFIX}{pid}-{name}", str(addresses[i + 1]), f"{VETH_PREFIX}{pid}{name}")
                _ip("netns", "add", host.ns)
                self._made.append(("netns", host.ns))
                _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
                self._made.append(("link", host.veth))
                _ip("link", "set", host.veth, "master", self.bridge, "up")
                _ip("-n", host.ns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
                _ip("-n", host.ns, "link", "set", "eth0", "up")
                _ip("-n", host.ns, "link", "set", "lo", "up")
                self.hosts[name] = host
        except BaseException:
            self.close()
            raise

    def cut(self, host: Host) -> None:
        """The host's link is cut: its veth goes down, in-flight packets and new ones are lost."""
        _ip("link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind((self.address, 0))
            return s.getsockname()[1]

    def close(self) -> None:
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self._made.clear()


def _wait_connect(address: str, port: int, timeout_s: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not accept connections on {address}:{port} within {timeout_s} s")


class PgCluster:
    """A PostgreSQL of the test's own on the bridge address (see the module docstring)."""

    def __init__(self, network: Network, log_dir: Path):
        self.address = network.address
        self.port = network.free_port()
        # Not under pytest's tmp_path: that is root's, mode 0700, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix=f"mailer-mh-pg-{os.getpid()}-"))
        self.log = log_dir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self._databases = 0
        data = self.dir / "data"
        shutil.chown(self.dir, PG_USER)
        try:
            subprocess.run(["runuser", "-u", PG_USER, "--", str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                            "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                           check=True, capture_output=True, text=True, timeout=180)
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {network.subnet} trust\n")
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    ["runuser", "-u", PG_USER, "--", str(PG_BIN / "postgres"), "-D", str(data),
                     "-c", f"listen_addresses={self.address}", "-c", f"port={self.port}",
                     "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
                     "-c", "max_connections=100",
                     # when each transaction committed (the test compares it with the sink's times)
                     "-c", "track_commit_timestamp=on"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            _wait_connect(self.address, self.port, SERVICE_START_S, self.proc, "postgres", self.log)
            self._template = self._create("mh_template")
            from mailer import db

            db.upgrade(self._template)
            db.dispose_engines()
        except BaseException:
            self.stop()
            raise

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(sa.text(sql))
        finally:
            engine.dispose()

    def _create(self, name: str, template: str | None = None) -> str:
        self._admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.url(name)

    def database(self) -> str:
        """A fresh, migrated database (a copy of the template every test starts from)."""
        self._databases += 1
        return self._create(f"mh_{self._databases}", "mh_template")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class BridgeRedis:
    """A ``redis-server`` of the test's own on the bridge address, no persistence."""

    def __init__(self, network: Network, log_dir: Path):
        self.address = network.address
        self.port = network.free_port()
        self.log = log_dir / "redis.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["redis-server", "--bind", self.address, "--port", str(self.port),
                                          "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_connect(self.address, self.port, SERVICE_START_S, self.proc, "redis-server", self.log)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- the SMTP sink --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Accepted:
    """One message the sink answered ``250``: which delivery, to whom, from which host, when (time.time())."""

    delivery: str
    rcpt: str
    peer: str
    at: float


_parser = BytesHeaderParser()
#: ``hold_peer`` value that holds every host's replies.
ANY_HOST = "*"


@dataclass
class _Handler:
    accepted: list[Accepted] = field(default_factory=list)
    #: Messages waiting for their reply (hold): (delivery, rcpt, peer).
    held: list[tuple[str, str, str]] = field(default_factory=list)
    hold_peer: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        # The header is "<delivery id>.<HMAC>" (signed); the sink keys by the id alone.
        delivery = str(_parser.parsebytes(raw).get("X-Mailer-Delivery", "")).partition(".")[0]
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        if self.hold_peer is not None and self.hold_peer in (peer, ANY_HOST):
            with self.lock:
                self.held.append((delivery, rcpt, peer))
            while self.hold_peer in (peer, ANY_HOST):
                await asyncio.sleep(0.02)
        with self.lock:
            self.accepted.append(Accepted(delivery, rcpt, peer, time.time()))
        return "250 2.0.0 Ok: queued"


class HostSink:
    """aiosmtpd on the bridge address; see the module docstring."""

    def __init__(self, network: Network):
        self.handler = _Handler()
        self.address = network.address
        self.port = network.free_port()
        self.controller = Controller(self.handler, hostname=self.address, port=self.port, decode_data=False,
                                     enable_SMTPUTF8=True, data_size_limit=10 * 1024 * 1024)
        self.controller.start()

    def url(self, **query) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"smtp://{self.address}:{self.port}" + (f"?{q}" if q else "")

    def accepted(self) -> list[Accepted]:
        with self.handler.lock:
            return list(self.handler.accepted)

    def held(self) -> list[tuple[str, str, str]]:
        with self.handler.lock:
            return list(self.handler.held)

    def hold(self, host: Host | None = None) -> None:
        """From now on, ``host``'s messages (every host's: None) wait for their reply until :meth:`release`."""
        with self.handler.lock:
            self.handler.held.clear()
        self.handler.hold_peer = host.address if host is not None else ANY_HOST

    def release(self) -> None:
        """Answer the held messages (250) and hold no more."""
        self.handler.hold_peer = None

    def by_delivery(self) -> collections.Counter:
        return collections.Counter(a.delivery for a in self.accepted())

    def by_host(self) -> collections.Counter:
        return collections.Counter(a.peer for a in self.accepted())

    def reset(self) -> None:
        self.release()
        with self.handler.lock:
            self.handler.accepted.clear()
            self.handler.held.clear()

    def stop(self) -> None:
        self.release()
        with contextlib.suppress(Exception):
            self.controller.stop()


def max_excess(counts: list[int], rate: int) -> int:
    """The most mails above ``rate`` per second over any run of consecutive calendar seconds
    (as bench/scale_out.py): the limiter's buckets are calendar seconds, and a mail whose
    token came from one second may be accepted in the next, one per worker thread at most."""
    best = current = 0
    for c in counts:
        current = max(0, current) + (c - rate)
        best = max(best, current)
    return best


# -- workers in namespaces ------------------------------------------------------------------------
@dataclass
class HostWorker:
    """``mailer worker`` running inside one host's namespace, in a process group of its own."""

    host: Host
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, host: Host, env: dict, log_dir: Path, *, threads: int) -> HostWorker:
        log_path = log_dir / f"worker-{host.name}-{time.monotonic_ns()}.log"
        env = {**env, "PYTHONPATH": str(PROJECT_ROOT), "MAILER_WORKER_NAME": f"host-{host.name}"}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(host.command([sys.executable, "-m", "mailer.cli", "worker", "-p", "1", "-t",
                                                  str(threads), "--worker-shutdown-timeout", "3000"]),
                                    cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return cls(host, proc, log_path)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_S
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "is ready for action" in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker on host {self.host.name} exited:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker on host {self.host.name} not ready after {WORKER_READY_S} s")

    def kill9(self) -> None:
        """SIGKILL the whole process group (dramatiq's master and its worker process): a dead host."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, chars: int = 3000) -> str:
        return log_tail(self.log, f"host {self.host.name}: {self.log.name}", chars)


# -- a mailer command, started ahead ---------------------------------------------------------------
_PRIMED = """
import json, sys
from mailer.cli import main
print("READY", flush=True)
sys.argv = ["mailer", *json.loads(sys.stdin.readline())]
main(prog_name="mailer")
"""


class PrimedCommand:
    """A ``mailer`` command whose interpreter has started and imported mailer, waiting for its
    arguments; :meth:`run` hands them over, so what is timed is the command, not Python's
    start-up on a loaded machine (seconds, more than the timeouts the test sets)."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-c", _PRIMED], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"mailer did not start: {line!r} {self.proc.stderr.read()[-2000:]}")

    def run(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        import json

        out, err = self.proc.communicate(json.dumps(args) + "\n", timeout=timeout_s)
        return subprocess.CompletedProcess(["mailer", *args], self.proc.returncode, out, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
