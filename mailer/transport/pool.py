"""Several relays with weights, failover and per-relay rate limits, behind one interface.

``MAILER_SMTP_URL`` is the primary relay; ``MAILER_SMTP_RELAYS`` adds more as
comma-separated ``url#weight`` entries (the primary may carry ``#weight`` too).  A
relay's URL may say ``?rate=N`` (messages per second) to override ``MAILER_RELAY_RATE``.

* :meth:`RelayPool.choose` picks the relay for the next message by weight, among relays
  that are not cooling down and have a rate-limit token this second (the token is
  taken); when every relay is at its limit it sleeps until the next second, for at most
  a bounded wait, then raises :class:`~mailer.errors.RateLimited`.
* :meth:`RelayPool.send` sends through the chosen relay; when that relay cannot be
  reached (a transient error before anything was handed over) it is put in cooldown
  for :data:`RELAY_COOLDOWN_S` and the next relay with a free token is tried, so one
  dead relay does not stop delivery.  A relay that lacks SMTPUTF8 hands an
  internationalized message on to a relay that has it.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from mailer.errors import ConfigurationError, RateLimited, SMTPUTF8Unsupported, TransientDeliveryError
from mailer.settings import Settings
from mailer.transport import open_transport, ratelimit
from mailer.transport.base import SendResult, Transport

#: Seconds a relay that failed to connect is skipped before it is tried again.
RELAY_COOLDOWN_S = 30.0


@dataclass
class Relay:
    transport: Transport
    weight: int
    #: Messages per second across all workers; 0 = unlimited.
    rate: int = 0
    down_until: float = 0.0

    @property
    def name(self) -> str:
        return self.transport.name


def parse_relays(primary: str, extra: str) -> list[tuple[str, int]]:
    """``[(url, weight), ...]``, the primary first."""
    relays: list[tuple[str, int]] = []
    for item in [primary, *filter(None, (p.strip() for p in extra.split(",")))]:
        url, _, weight = item.partition("#")
        try:
            w = int(weight or 1)
        except ValueError as exc:
            raise ConfigurationError(f"MAILER_SMTP_RELAYS: weight {weight!r} of {url!r} is not a number") from exc
        if w < 0:
            raise ConfigurationError(f"MAILER_SMTP_RELAYS: weight of {url!r} must not be negative")
        relays.append((url, w))
    return relays


def relay_rate(url: str, default: int) -> int:
    """``?rate=N`` on the URL, else the default."""
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    try:
        return int(query.get("rate", default))
    except ValueError as exc:
        raise ConfigurationError(f"relay {url!r}: rate {query.get('rate')!r} is not a number") from exc


@dataclass(frozen=True)
class RelayHealth:
    """One relay as the console's settings page shows it."""

    name: str
    weight: int
    rate: int
    #: Seconds this process still skips it after a failed connection (0 = in use).
    cooling_down_s: float
    #: None when not probed; else whether it answered and what.
    reachable: bool | None = None
    detail: str = ""


def probe(transport: Transport, timeout_s: float = 3.0) -> tuple[bool | None, str]:
    """Open a connection to an SMTP relay and read its greeting (no mail, no login)."""
    host, port = getattr(transport, "host", None), getattr(transport, "port", None)
    if not host or not port:
        return None, "not a network relay"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if getattr(transport, "ssl", False):
                return True, "TCP connection accepted (TLS greeting not read)"
            sock.settimeout(timeout_s)
            greeting = sock.recv(512).decode("utf-8", "replace").strip().splitlines()
    except OSError as exc:
        return False, f"cannot connect: {exc}"
    first = greeting[0] if greeting else ""
    return first.startswith("220"), first[:200] or "no greeting"


class RelayPool:
    """Weighted choice among relays, failing over on connection trouble, rate-limited."""

    def __init__(self, relays: list[Relay], limiter: ratelimit.Limiter | None = None):
        if not relays:
            raise ConfigurationError("no mail relay configured")
        self.relays = relays
        self.limiter = limiter
        self.name = relays[0].name if len(relays) == 1 else "pool"
        self._lock = threading.Lock()
        self._rng = random.Random()  # picks a relay by weight, no security use  # nosec B311

    def health(self, *, check: bool = False) -> list[RelayHealth]:
        """Every relay with its weight, rate and cool-down; ``check`` also probes each one."""
        now = time.monotonic()
        out = []
        for r in self.relays:
            reachable, detail = probe(r.transport) if check else (None, "")
            out.append(RelayHealth(r.name, r.weight, r.rate, max(0.0, r.down_until - now), reachable, detail))
        return out

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayPool:
        relays = [Relay(open_transport(url), w, relay_rate(url, settings.relay_rate))
                  for url, w in parse_relays(settings.smtp_url, settings.smtp_relays)]
        limiter = ratelimit.limiter_for(settings) if any(r.rate > 0 for r in relays) else None
        return cls(relays, limiter)

    # -- choosing ---------------------------------------------------------------------------
    def order(self, now: float | None = None) -> list[Relay]:
        """Relays to try, the weighted pick first, relays in cooldown last."""
        now = time.monotonic() if now is None else now
        up = [r for r in self.relays if r.down_until <= now]
        down = [r for r in self.relays if r.down_until > now]
        weighted = [r for r in up if r.weight > 0]
        if len(weighted) > 1:
            with self._lock:
                first = self._rng.choices(weighted, weights=[r.weight for r in weighted])[0]
            up.remove(first)
            up.insert(0, first)
        return up + down

    def _take(self, relay: Relay) -> bool:
        if self.limiter is None or relay.rate <= 0:
            return True
        return self.limiter.try_acquire(ratelimit.relay_key(relay.name), relay.rate)

    def choose(self, *, max_wait_s: float = ratelimit.MAX_WAIT_S) -> Relay:
        """The relay for the next message, with its rate-limit token taken."""
        started = time.monotonic()
        while True:
            for relay in self.order():
                if self._take(relay):
                    return relay
            pause = ratelimit.seconds_to_next_bucket() + random.uniform(0, ratelimit.JITTER_S)  # retry jitter, no security use  # nosec B311
            if time.monotonic() - started + pause > max_wait_s:
                raise RateLimited(f"every relay is at its rate limit after {max_wait_s:.0f} s; "
                                            "retrying later")
            time.sleep(pause)

    def supports_smtputf8(self) -> bool:
        """Does at least one relay offer SMTPUTF8?"""
        for relay in self.order():
            check = getattr(relay.transport, "supports_smtputf8", None)
            try:
                if check is None or check():
                    return True
            except TransientDeliveryError:
                continue
        return False

    # -- sending ----------------------------------------------------------------------------
    def send(self, *, envelope_from: str, recipient: str, message: bytes, relay: Relay | None = None) -> SendResult:
        """Send through ``relay`` (or a fresh choice), failing over as the module docstring says."""
        first = relay or self.choose()
        candidates = [first] + [r for r in self.order() if r is not first]
        last: Exception | None = None
        for i, candidate in enumerate(candidates):
            if i > 0 and not self._take(candidate):
                continue  # failover only to a relay with a free token
            try:
                return candidate.transport.send(envelope_from=envelope_from, recipient=recipient, message=message)
            except SMTPUTF8Unsupported as exc:
                last = exc
                continue
            except TransientDeliveryError as exc:
                # Only connection failures (no SMTP code) fail over: the message was not handed over.
                if exc.code is not None or exc.maybe_sent:
                    raise
                candidate.down_until = time.monotonic() + RELAY_COOLDOWN_S
                last = exc
        if isinstance(last, SMTPUTF8Unsupported) and len(candidates) > 1:
            raise SMTPUTF8Unsupported(f"no configured relay offers SMTPUTF8, which the internationalized address "
                                      f"{recipient!r} needs; nothing was sent", reply=last.reply)
        if last is None:
            raise RateLimited("no relay had a free rate-limit token for failover; retrying later")
        raise last

    def close(self) -> None:
        for relay in self.relays:
            relay.transport.close()
