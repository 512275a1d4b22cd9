"""A lean counting SMTP sink for the benchmarks: asyncio, one process, no parsing beyond counting.

aiosmtpd spends about 2 ms of its own CPU on a 40 KB message, so a benchmark that sends
to it measures aiosmtpd.  This sink speaks just enough SMTP for smtplib and mailer's
transport (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; it announces 8BITMIME,
SMTPUTF8 and PIPELINING, RFC 2920: commands that arrive together are answered in order)
and per accepted message does three cheap things in C: find the end of DATA, find the
header block, pull out ``Message-ID`` and one chosen header.

``--delay-ms N`` answers each message's final ``250`` N milliseconds after its data
ended, as a relay on the other side of the world does (the round trip plus its own
queueing); the connection reads nothing more meanwhile, so one connection carries at
most one message per N ms and only more connections make a faster sender.

It counts messages, bytes and unique Message-IDs (a duplicate shows as
``messages - unique_ids``) and records, per value of the chosen header (default
``X-Mailer-Delivery``, which mailer puts on every mail), the wall-clock time
(``time.time()``) at which the final ``250`` was written: the moment the relay
accepted the message.

Run it as its own process (so it uses the other core)::

    python bench/sink.py --port 2525 --control-port 2526 [--cpu 1]

It prints ``READY <smtp port> <control port>`` when listening.  The control port takes
one command per line and answers one JSON line:

* ``STATS``   ``{"messages", "unique_ids", "bytes", "connections", "first_ts", "last_ts", "cpu_s"}``
* ``TIMES``   ``{"<header value>": accept time, ...}`` for every message that had the header
* ``RESET``   zero every counter and forget the times
* ``STOP``    answer the stats and exit

:class:`SinkProcess` starts it from another script and talks to the control port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

#: End of the DATA section (the lone dot line).
_END = b"\r\n.\r\n"
#: Largest line accepted in command mode, bytes (RFC 5321 says 512 for commands).
MAX_LINE_BYTES = 4096
#: Largest message accepted, bytes (announced as SIZE).
MAX_MESSAGE_BYTES = 50 * 1024 * 1024


class Counters:
    """What the sink has seen since start (or the last RESET)."""

    def __init__(self, record_header: str):
        self.header_re = re.compile(rb"^" + re.escape(record_header.encode()) + rb":[ \t]*([^\r\n]*)",
                                    re.I | re.M)
        self.reset()

    def reset(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.connections = 0
        self.ids: set[bytes] = set()
        self.times: dict[str, float] = {}
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def accepted(self, data: bytes | bytearray) -> None:
        now = time.time()
        head_end = data.find(b"\r\n\r\n")
        head = bytes(data[:head_end if head_end >= 0 else len(data)])
        m = _MESSAGE_ID.search(head)
        if m:
            self.ids.add(m.group(1).strip())
        h = self.header_re.search(head)
        if h:
            self.times[h.group(1).strip().decode("ascii", "replace")] = now
        self.messages += 1
        self.bytes += len(data)
        if self.first_ts is None:
            self.first_ts = now
        self.last_ts = now

    def stats(self) -> dict:
        t = os.times()
        return {"messages": self.messages, "unique_ids": len(self.ids), "bytes": self.bytes,
                "connections": self.connections, "first_ts": self.first_ts, "last_ts": self.last_ts,
                "cpu_s": t.user + t.system}


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*([^\r\n]*)", re.I | re.M)


class SMTPSession(asyncio.Protocol):
    """One SMTP connection: command lines, then raw DATA until the dot line."""

    def __init__(self, counters: Counters, hostname: str, delay_s: float = 0.0):
        self.c = counters
        self.hostname = hostname
        #: Seconds between the end of a message's data and its 250 (``--delay-ms``).
        self.delay_s = delay_s
        self.waiting = False
        self.buf = bytearray()
        self.in_data = False
        self.mail_from = False
        self.rcpts = 0
        self.scan_from = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.c.connections += 1
        transport.write(f"220 {self.hostname} bench sink ready\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.waiting:
            self._consume()

    def _accept_later(self, message: bytearray) -> None:
        self.c.accepted(message)
        self.waiting = False
        if not self.transport.is_closing():
            self._reply(b"250 2.0.0 OK queued")
            self._consume()

    def _consume(self) -> None:
        while self.buf and not self.waiting:
            if self.in_data:
                if self.buf.startswith(b".\r\n") and self.scan_from == 0:
                    end = -2  # an empty message: the dot line comes first
                else:
                    end = self.buf.find(_END, self.scan_from)
                if end == -1:
                    # Next time search only the new tail (the marker may straddle two reads).
                    self.scan_from = max(0, len(self.buf) - len(_END) + 1)
                    if len(self.buf) > MAX_MESSAGE_BYTES:
                        self._reply(b"552 message too big")
                        self.transport.close()
                    return
                message = self.buf[:end + 2]
                del self.buf[:end + len(_END)]
                self.in_data = False
                self.mail_from = False
                self.rcpts = 0
                if self.delay_s > 0:
                    # The relay's latency: answer later, and read nothing more until then.
                    self.waiting = True
                    asyncio.get_running_loop().call_later(self.delay_s, self._accept_later, message)
                    return
                self.c.accepted(message)
                self._reply(b"250 2.0.0 OK queued")
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE_BYTES:
                    self._reply(b"500 5.5.2 line too long")
                    self.transport.close()
                return
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[:nl + 1]
            self._command(line)

    def _reply(self, text: bytes) -> None:
        self.transport.write(text + b"\r\n")

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.transport.write(f"250-{self.hostname}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n"
                                 f"250 SIZE {MAX_MESSAGE_BYTES}\r\n".encode())
        elif verb == b"HELO":
            self._reply(f"250 {self.hostname}".encode())
        elif verb == b"MAIL":
            self.mail_from, self.rcpts = True, 0
            self._reply(b"250 2.1.0 OK")
        elif verb == b"RCPT":
            if not self.mail_from:
                self._reply(b"503 5.5.1 MAIL first")
            else:
                self.rcpts += 1
                self._reply(b"250 2.1.5 OK")
        elif verb == b"DATA":
            if not self.rcpts:
                self._reply(b"503 5.5.1 RCPT first")
            else:
                self.in_data, self.scan_from = True, 0
                self._reply(b"354 end data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self.mail_from, self.rcpts = False, 0
            self._reply(b"250 2.0.0 OK")
        elif verb == b"NOOP":
            self._reply(b"250 2.0.0 OK")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 bye")
            self.transport.close()
        else:
            self._reply(b"502 5.5.2 command not implemented")


class Control(asyncio.Protocol):
    """The control port: STATS / TIMES / RESET / STOP, one JSON line back."""

    def __init__(self, counters: Counters, stop: asyncio.Event):
        self.c = counters
        self.stop = stop
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            cmd = line.strip().upper()
            if cmd == b"STATS":
                out = self.c.stats()
            elif cmd == b"TIMES":
                out = self.c.times
            elif cmd == b"RESET":
                self.c.reset()
                out = {"ok": True}
            elif cmd == b"STOP":
                out = self.c.stats()
                self.stop.set()
            else:
                out = {"error": f"unknown command {cmd.decode(errors='replace')!r}"}
            self.transport.write(json.dumps(out).encode() + b"\n")


async def serve(host: str, port: int, control_port: int, record_header: str, delay_ms: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters(record_header)
    stop = asyncio.Event()
    smtp = await loop.create_server(lambda: SMTPSession(counters, "bench-sink", delay_ms / 1000), host, port, backlog=256)
    control = await loop.create_server(lambda: Control(counters, stop), host, control_port)
    ports = (smtp.sockets[0].getsockname()[1], control.sockets[0].getsockname()[1])
    print(f"READY {ports[0]} {ports[1]}", flush=True)
    await stop.wait()
    await asyncio.sleep(0.05)  # let the STOP answer go out
    smtp.close()
    control.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="SMTP port (0 = any free port)")
    ap.add_argument("--control-port", type=int, default=0, help="control port (0 = any free port)")
    ap.add_argument("--record-header", default="X-Mailer-Delivery",
                    help="header whose value is recorded with the acceptance time")
    ap.add_argument("--cpu", type=int, default=None, help="pin the sink to this CPU")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="answer each message's final 250 this many milliseconds after its data (relay latency)")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.host, args.port, args.control_port, args.record_header, args.delay_ms))


# -- driving a sink process from a benchmark ----------------------------------------------------
class SinkProcess:
    """``bench/sink.py`` as a child process, with its control port at hand."""

    def __init__(self, *, cpu: int | None = None, record_header: str = "X-Mailer-Delivery", delay_ms: float = 0.0):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--record-header", record_header,
               "--delay-ms", str(delay_ms)]
        self.delay_ms = delay_ms
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"sink did not start: {line!r}")
        self.port, self.control_port = int(line[1]), int(line[2])
        self.url = f"smtp://127.0.0.1:{self.port}"

    def ask(self, command: str, timeout_s: float = 30.0):
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=timeout_s) as s:
            s.sendall(command.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def stats(self) -> dict:
        return self.ask("STATS")

    def times(self) -> dict[str, float]:
        return self.ask("TIMES")

    def reset(self) -> None:
        self.ask("RESET")

    def stop(self) -> dict | None:
        if self.proc.poll() is not None:
            return None
        try:
            out = self.ask("STOP", timeout_s=5)
        except OSError:
            out = None
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return out

    def __enter__(self) -> "SinkProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
