"""Several relays with weights and failover, behind the same Transport interface.

``MAILER_SMTP_URL`` is the primary relay; ``MAILER_SMTP_RELAYS`` adds more as
comma-separated ``url#weight`` entries.  Each send picks a relay by weight; when a
relay fails to connect (a transient error before anything was sent), the next relay
is tried, so one dead relay does not stop delivery.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from mailer.errors import ConfigurationError, TransientDeliveryError
from mailer.settings import Settings
from mailer.transport import SendResult, Transport, open_transport

#: Seconds a relay that failed to connect is skipped before it is tried again.
RELAY_COOLDOWN_S = 30.0


@dataclass
class Relay:
    transport: Transport
    weight: int
    down_until: float = 0.0


def parse_relays(primary: str, extra: str) -> list[tuple[str, int]]:
    relays = [(primary, 1)]
    for item in filter(None, (p.strip() for p in extra.split(","))):
        url, _, weight = item.partition("#")
        try:
            relays.append((url, int(weight or 1)))
        except ValueError as exc:
            raise ConfigurationError(f"MAILER_SMTP_RELAYS: weight {weight!r} of {url!r} is not a number") from exc
    if len(relays) > 1 and "#" in primary:
        url, _, weight = primary.partition("#")
        relays[0] = (url, int(weight or 1))
    return relays


class RelayPool:
    """Weighted choice among relays, failing over on connection trouble."""

    def __init__(self, relays: list[Relay]):
        if not relays:
            raise ConfigurationError("no mail relay configured")
        self.relays = relays
        self.name = relays[0].transport.name if len(relays) == 1 else "pool"
        self._lock = threading.Lock()
        self._rng = random.Random()

    @classmethod
    def from_settings(cls, settings: Settings) -> "RelayPool":
        return cls([Relay(open_transport(url), w) for url, w in parse_relays(settings.smtp_url, settings.smtp_relays)])

    def order(self, now: float | None = None) -> list[Relay]:
        """Relays to try, the weighted pick first, relays in cooldown last."""
        import time

        now = time.monotonic() if now is None else now
        up = [r for r in self.relays if r.down_until <= now]
        down = [r for r in self.relays if r.down_until > now]
        if len(up) > 1:
            with self._lock:
                first = self._rng.choices(up, weights=[r.weight for r in up])[0]
            up.remove(first)
            up.insert(0, first)
        return up + down

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        import time

        last: TransientDeliveryError | None = None
        for relay in self.order():
            try:
                return relay.transport.send(envelope_from=envelope_from, recipient=recipient, message=message)
            except TransientDeliveryError as exc:
                # Only connection failures (no SMTP code) fail over: the message was not handed over.
                if exc.code is not None or getattr(exc, "maybe_sent", False):
                    raise
                relay.down_until = time.monotonic() + RELAY_COOLDOWN_S
                last = exc
        assert last is not None
        raise last

    def close(self) -> None:
        for relay in self.relays:
            relay.transport.close()
