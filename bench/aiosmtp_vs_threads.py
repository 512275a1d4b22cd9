"""Benchmark: N SMTP connections as threads (mailer's transport) or as asyncio tasks (aiosmtplib).

Run: python bench/aiosmtp_vs_threads.py [--mails 2000] [--connections 24] [--delays 0,50]

The question of issue 19 ("threads or asyncio, whichever measures better"), asked once:
the same pre-built 40 KB message goes ``--mails`` times to the lean sink
(``bench/sink.py``, on the other CPU, answering each message after ``--delay-ms``)
over ``--connections`` concurrent connections, either

* **threads**: ``--connections`` threads, each sending through
  :class:`mailer.transport.smtp.SMTPTransport` (one reused connection per thread,
  PIPELINING when offered), as the sending threads of ``MAILER_SMTP_CONNECTIONS`` do; or
* **asyncio**: one event loop with ``--connections`` ``aiosmtplib.SMTP`` clients, each
  sending its share one message after another (aiosmtplib has no PIPELINING).

Printed per mode: mails/s (wall) and this process's CPU per mail (user + system), the
figure that matters when the worker's CPU is the limit.  Needs ``pip install aiosmtplib``
(not a dependency of mailer: this script only measures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import loadavg, print_machine
from sink import SinkProcess

#: Size of the test message body, bytes (a campaign mail as sent is about 41 KB).
MESSAGE_BYTES = 41_000


def message(i: int) -> bytes:
    body = (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\r\n"
            * (MESSAGE_BYTES // 78))
    head = (f"From: shop@example.com\r\nTo: r{i}@example.net\r\nSubject: bench\r\n"
            f"Message-ID: <{i}.bench@example.com>\r\nX-Mailer-Delivery: {i}\r\n\r\n").encode()
    return head + body


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def with_threads(url: str, n: int, conns: int) -> tuple[float, float]:
    from mailer.transport.smtp import SMTPTransport

    transport = SMTPTransport(url)
    msgs = [message(i) for i in range(n)]
    shares = [msgs[k::conns] for k in range(conns)]

    def run(share: list[bytes]) -> None:
        for m in share:
            transport.send(envelope_from="bounces@example.com", recipient="r@example.net", message=m)

    threads = [threading.Thread(target=run, args=(s,)) for s in shares]
    c0, t0 = cpu(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0, cpu() - c0


def with_asyncio(host: str, port: int, n: int, conns: int) -> tuple[float, float]:
    import aiosmtplib

    msgs = [message(i) for i in range(n)]
    shares = [msgs[k::conns] for k in range(conns)]

    async def run(share: list[bytes]) -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
        await client.connect()
        for m in share:
            await client.sendmail("bounces@example.com", ["r@example.net"], m)
        await client.quit()

    async def main() -> None:
        await asyncio.gather(*(run(s) for s in shares))

    c0, t0 = cpu(), time.monotonic()
    asyncio.run(main())
    return time.monotonic() - t0, cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mails", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=24)
    ap.add_argument("--delays", default="0,50", help="relay latencies to run, ms, comma separated")
    args = ap.parse_args()
    try:
        import aiosmtplib  # noqa: F401
    except ImportError:
        sys.exit("needs aiosmtplib: pip install aiosmtplib (a measurement only, not a mailer dependency)")
    print_machine(f"{args.mails} mails of {MESSAGE_BYTES // 1000} KB over {args.connections} connections")
    for delay in (float(d) for d in args.delays.split(",")):
        for mode in ("threads", "asyncio"):
            with SinkProcess(cpu=1 if sys.platform.startswith("linux") else None, delay_ms=delay) as sink:
                if mode == "threads":
                    wall, used = with_threads(sink.url, args.mails, args.connections)
                else:
                    wall, used = with_asyncio("127.0.0.1", sink.port, args.mails, args.connections)
                got = sink.stats().get("messages")
            print(f"   relay {delay:4.0f} ms  {mode:8s} {args.mails / wall:7.0f} mails/s  "
                  f"{used / args.mails * 1000:.3f} ms CPU per mail  (sink counted {got}; load {loadavg()})")


if __name__ == "__main__":
    main()
