"""A/B and A/B/n tests of a campaign: the split, the wait, the decision, the winner for the rest.

Mautic's model.  A campaign has 2-4 variants (subject, preheader or template, optionally per
locale; the first is the default), a test share of the segment, a winning metric (human open
rate, click rate or attributed revenue per recipient), a wait and a confidence:

1. **Testing.**  The fan-out (:mod:`mailer.campaigns.fanout`) streams the segment as usual but
   creates deliveries only for the test share: a recipient is in it when
   :func:`bucket` (a SHA-256 of a fixed seed, the campaign id and the customer id, read as a
   number in [0, 1)) is below the share; the same number, scaled, picks the variant, so the
   split is random, even across the variants, and the same every time it is computed.
   Each delivery records its variant (``deliveries.variant``).
2. **Waiting.**  When the test pass is done (:func:`test_share_out`), the test ends ``wait``
   after the last test mail is due (for a local-time campaign, the last recipient's local
   time), and a ``decide_ab_test`` message is enqueued with that delay.
3. **Deciding** (:func:`decide`: the actor, or the sweeper hook :func:`sweep_hook` when the
   message was lost): figures per variant (:func:`arms`), the statistics of
   :mod:`mailer.campaigns.abstats`, and one transaction that records the decision (only from
   ``waiting``: running it twice decides once) and rewinds the fan-out cursor.  With no
   significant difference the default variant (the first) goes out and the decision says
   "no winner" with the interval.
4. **The rest.**  The fan-out runs the segment again with the winner: everyone who already
   has this campaign's delivery (the test share) is skipped by the idempotency key
   ``campaign:<id>:<customer>``, so every recipient gets exactly one mail.  A local-time
   campaign sends the rest at the same local time, counted from the decision.

A crash anywhere resumes: the decision is committed with the rewound cursor or not at all,
and a fan-out that does not start is restarted by the sweeper's stalled-fan-out check.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, distinct, func, select, update
from sqlalchemy.orm import Session

from mailer.campaigns import abstats
from mailer.clock import utcnow
from mailer.errors import ValidationError
from mailer.models import (
    AbTest,
    Attribution,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    Order,
    TrackingEvent,
    TrackingKind,
)
from mailer.queue import port

log = logging.getLogger("mailer.campaigns")

#: Fixed seed of the split (changing it would move recipients between variants).
SPLIT_SEED = "mailer-ab-v1"
LABELS = ("A", "B", "C", "D")
MIN_VARIANTS, MAX_VARIANTS = 2, 4
METRICS = ("opens", "clicks", "revenue")
#: Bounds of the test share, percent of the segment.
MIN_SHARE_PERCENT, MAX_SHARE_PERCENT = 1.0, 50.0
#: Bounds of the wait, seconds (1 minute .. 30 days).
MIN_WAIT_S, MAX_WAIT_S = 60, 30 * 86400
MIN_CONFIDENCE, MAX_CONFIDENCE = 0.80, 0.999
#: Longest variant text (subject or preheader), characters.
MAX_VARIANT_TEXT_CHARS = 500
#: Every local time of a campaign falls within this many seconds after its start.
LOCAL_TIME_SPREAD_S = 86400

TESTING, WAITING, DECIDED = "testing", "waiting", "decided"
FIELDS = ("subject", "preheader", "template")

_SPEC = re.compile(r"^(?:(\*|[a-z]{2,3}(?:-[A-Za-z]{2,4})?):)?(subject|preheader|template)=(.*)$", re.S)
_WAIT = re.compile(r"^(\d{1,7})(s|m|h|d)$")
_WAIT_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- the split ---------------------------------------------------------------------------------
def bucket(campaign_id: int, customer_id: int) -> float:
    """A number in [0, 1) fixed by the campaign and the customer (uniform over customers)."""
    digest = hashlib.sha256(f"{SPLIT_SEED}:{campaign_id}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def assign(campaign_id: int, customer_id: int, share_percent: float, variants: int) -> int | None:
    """The index of the test variant this customer gets, or None when not in the test share."""
    u = bucket(campaign_id, customer_id)
    share = share_percent / 100
    if u >= share:
        return None
    return min(variants - 1, int(u / share * variants))


# -- parsing the command line ------------------------------------------------------------------
def parse_variants(values: tuple[str, ...] | list[str] | None) -> list[dict]:
    """``--variant`` values -> [{"template": str|None, "subjects": {loc: text}, "preheaders": {...}}].

    ``FIELD=TEXT`` (FIELD: subject, preheader or template) starts a new variant, for every
    locale; ``LOCALE:FIELD=TEXT`` (``en:subject=...``, or ``*:preheader=...`` for every
    locale) adds to the variant before it.
    """
    out: list[dict] = []
    for raw in values or ():
        m = _SPEC.match(raw or "")
        position = len(out) + (0 if m and m.group(1) else 1)
        if not m:
            raise ValidationError(f"--variant {raw!r}: use FIELD=TEXT or LOCALE:FIELD=TEXT with FIELD one of "
                                  f"{', '.join(FIELDS)} (e.g. 'subject=Hello' or 'pl:subject=Cześć')",
                                  field=f"variant[{max(position, 1)}]")
        locale, what, text = m.group(1), m.group(2), m.group(3).strip()
        if locale is None:
            out.append({"template": None, "subjects": {}, "preheaders": {}})
            locale = "*"
        elif not out:
            raise ValidationError(f"--variant {raw!r}: a LOCALE:{what}= value adds to the variant before it; "
                                  f"start with a variant such as '{what}=TEXT'", field="variant[1]")
        n = len(out)
        field = f"variant[{n}].{what}" + ("" if what == "template" else f"[{locale}]")
        if not text:
            raise ValidationError(f"{field} must not be empty", field=field)
        if "\n" in text or "\r" in text:
            raise ValidationError(f"{field} must be one line", field=field)
        if len(text) > MAX_VARIANT_TEXT_CHARS:
            raise ValidationError(f"{field} is longer than {MAX_VARIANT_TEXT_CHARS} characters", field=field)
        current = out[-1]
        if what == "template":
            if locale != "*":
                raise ValidationError(f"{field}: a template is for every locale (no LOCALE: prefix)", field=field)
            if current["template"] is not None:
                raise ValidationError(f"{field} given twice", field=field)
            current["template"] = text
        else:
            table = current["subjects" if what == "subject" else "preheaders"]
            if locale in table:
                raise ValidationError(f"{field} given twice", field=field)
            table[locale] = text
    if out and not MIN_VARIANTS <= len(out) <= MAX_VARIANTS:
        raise ValidationError(f"--variant: an A/B test has {MIN_VARIANTS}-{MAX_VARIANTS} variants, got {len(out)}",
                              field="variant")
    return out


def parse_wait(value: str | int | None) -> int:
    """``--test-wait``: ``90m``, ``4h``, ``2d`` (or seconds as a number) -> seconds, bounded."""
    if isinstance(value, int):
        seconds = value
    else:
        m = _WAIT.match((value or "").strip())
        if not m:
            raise ValidationError(f"--test-wait {value!r}: use a duration such as 90m, 4h or 2d", field="test_wait")
        seconds = int(m.group(1)) * _WAIT_UNITS_S[m.group(2)]
    if not MIN_WAIT_S <= seconds <= MAX_WAIT_S:
        raise ValidationError(f"--test-wait must be between 1 minute and {MAX_WAIT_S // 86400} days",
                              field="test_wait")
    return seconds


@dataclass(frozen=True)
class Settings:
    """An A/B test's settings as given: test share (percent), winning metric, wait (seconds), confidence."""

    test_share_percent: float
    winner_metric: str
    wait_s: int
    confidence: float = 0.95

    def check(self) -> None:
        if self.winner_metric not in METRICS:
            raise ValidationError(f"--winner-metric {self.winner_metric!r}: one of {', '.join(METRICS)}",
                                  field="winner_metric")
        share = self.test_share_percent
        if not isinstance(share, (int, float)) or not MIN_SHARE_PERCENT <= share <= MAX_SHARE_PERCENT:
            raise ValidationError(f"--test-share must be {MIN_SHARE_PERCENT:g}-{MAX_SHARE_PERCENT:g} (percent of the "
                                  f"segment)", field="test_share")
        if not MIN_CONFIDENCE <= self.confidence <= MAX_CONFIDENCE:
            raise ValidationError(f"--confidence must be between {MIN_CONFIDENCE} and {MAX_CONFIDENCE}",
                                  field="confidence")
        parse_wait(int(self.wait_s))


def labelled(variants: list[dict]) -> list[dict]:
    return [{"label": LABELS[i], **v} for i, v in enumerate(variants)]


# -- the fan-out's plan ------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How the fan-out treats a tested campaign's recipients in its current state."""

    state: str
    share_percent: float
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    winner: str | None
    decided_at: datetime | None

    def variant_for(self, campaign_id: int, customer_id: int) -> tuple[str, str] | None:
        """(label, template) for this recipient now, or None: not mailed in this pass."""
        if self.state == TESTING:
            i = assign(campaign_id, customer_id, self.share_percent, len(self.labels))
            return None if i is None else (self.labels[i], self.templates[i])
        if self.state == DECIDED and self.winner in self.labels:
            i = self.labels.index(self.winner)
            return self.labels[i], self.templates[i]
        return None  # waiting: nothing to fan out


def plan(session: Session, campaign: Campaign) -> Plan | None:
    """The plan for ``campaign``'s fan-out, or None for a campaign without a test."""
    if not campaign.variants:
        return None
    test = session.get(AbTest, campaign.id)
    if test is None:
        return None
    return Plan(state=test.state, share_percent=test.test_share_percent,
                labels=tuple(v["label"] for v in campaign.variants),
                templates=tuple(v.get("template") or campaign.template for v in campaign.variants),
                winner=test.winner, decided_at=test.decided_at)


def test_share_out(session: Session, campaign_id: int, *, now: datetime | None = None) -> datetime | None:
    """The test pass is done: the test waits (``waiting``) until the last test mail is due plus the wait.

    Returns when the test ends (None when this call did not move it: already waiting, or lost).
    """
    now = now or utcnow()
    test = session.get(AbTest, campaign_id)
    if test is None or test.state != TESTING:
        return None
    # The latest local time among the test mails (ix_deliveries_campaign_status narrows to the campaign).
    last_due = session.execute(select(func.max(Delivery.send_after)).where(Delivery.campaign_id == campaign_id)
                               ).scalar_one_or_none()
    start = max(now, _aware(last_due)) if last_due is not None else now
    ends = start + timedelta(seconds=test.wait_s)
    # Conditional: of two fan-outs finishing at once only one moves the test on.
    res = session.execute(update(AbTest).where(AbTest.campaign_id == campaign_id, AbTest.state == TESTING)
                          .values(state=WAITING, test_ends_at=ends).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return None
    log.info("campaign %s: A/B test share is out; the winner is picked at %s", campaign_id, ends.isoformat())
    return ends


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def schedule_decision(campaign_id: int, ends: datetime, *, now: datetime | None = None) -> bool:
    """Enqueue ``decide_ab_test`` for when the test ends (broker down: the sweeper hook decides)."""
    now = now or utcnow()
    delay_ms = max(0, int((ends - now).total_seconds() * 1000))
    return port.enqueue_stored(port.DECIDE_AB_TEST, campaign_id, delay_ms=delay_ms or None)


# -- figures and the decision ------------------------------------------------------------------
def arms(session: Session, campaign_id: int, metric: str, labels: tuple[str, ...] | list[str]) -> list[abstats.Arm]:
    """Each variant's figures: mails sent and unique human opens / unique clicks, or revenue sums."""
    # Sent per variant: one GROUP BY over the campaign's deliveries (ix_deliveries_campaign_status).
    sent = dict(session.execute(select(Delivery.variant, func.count())
                                .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.sent,
                                       Delivery.variant.is_not(None))
                                .group_by(Delivery.variant)).all())
    successes: dict = {}
    totals: dict = {}
    if metric in ("opens", "clicks"):
        kind = TrackingKind.open if metric == "opens" else TrackingKind.click
        # Unique deliveries with the event, by the delivery's variant: the campaign's events
        # (ix_tracking_campaign_kind) joined to their delivery by primary key.
        successes = dict(session.execute(
            select(Delivery.variant, func.count(distinct(TrackingEvent.delivery_id)))
            .join(Delivery, Delivery.id == TrackingEvent.delivery_id)
            .where(TrackingEvent.campaign_id == campaign_id, TrackingEvent.kind == kind,
                   Delivery.status == DeliveryStatus.sent)
            .group_by(Delivery.variant)).all())
    else:
        totals = revenue_by_variant(session, campaign_id)
    out = []
    for label in labels:
        total, total_sq, buyers = totals.get(label, (0.0, 0.0, 0))
        out.append(abstats.Arm(label=label, n=int(sent.get(label, 0)), successes=int(successes.get(label, buyers)),
                               total=float(total), total_sq=float(total_sq)))
    return out


def revenue_by_variant(session: Session, campaign_id: int) -> dict[str, tuple[float, float, int]]:
    """Attributed revenue per variant: (sum, sum of squares per recipient, recipients who bought).

    In the shop's currency (``orders.total_shop``, converted with MAILER_FX_RATES_FILE), so
    orders in several currencies add up; an order without a shop-currency total counts 0.
    Reversed attributions (cancelled, refunded orders) do not count.
    """
    # Revenue per delivery first (a recipient may have several attributed orders; the
    # campaign's attributions via ix_attributions_campaign, orders by primary key), then the
    # sums per variant over those per-delivery totals.
    per_delivery = (select(Delivery.variant.label("variant"),
                           func.coalesce(func.sum(Order.total_shop), 0).label("revenue"))
                    .select_from(Attribution)
                    .join(Delivery, Delivery.id == Attribution.delivery_id)
                    .join(Order, Order.id == Attribution.order_id)
                    .where(Attribution.campaign_id == campaign_id, Attribution.reversed_at.is_(None),
                           Delivery.variant.is_not(None))
                    .group_by(Delivery.id, Delivery.variant).subquery())
    rows = session.execute(select(per_delivery.c.variant, func.sum(per_delivery.c.revenue),
                                  func.sum(per_delivery.c.revenue * per_delivery.c.revenue),
                                  func.count(case((per_delivery.c.revenue > 0, 1))))
                           .group_by(per_delivery.c.variant)).all()
    return {r[0]: (float(r[1] or 0), float(r[2] or 0), int(r[3] or 0)) for r in rows}


def decide(app, campaign_id: int, *, now: datetime | None = None) -> str | None:
    """Decide a test whose wait is over and start fanning the rest out; returns the winner's label.

    Safe to run twice (only a ``waiting`` test is decided, by a conditional UPDATE) and
    resumable (decision and rewound cursor commit together; the fan-out is enqueued after,
    and restarted by the sweeper if that message is lost).  A paused campaign is decided
    once it runs again; a cancelled one never.
    """
    now = now or utcnow()
    with app.session() as s:
        test = s.get(AbTest, campaign_id)
        campaign = s.get(Campaign, campaign_id)
        if test is None or campaign is None or test.state != WAITING:
            return None
        if test.test_ends_at is not None and _aware(test.test_ends_at) > now:
            return None
        if campaign.status is not CampaignStatus.running:
            return None
        labels = [v["label"] for v in campaign.variants or []]
        figures = arms(s, campaign_id, test.winner_metric, labels)
        decision = abstats.decide(figures, test.winner_metric, confidence=test.confidence)
        winner = decision.winner or labels[0]
        record = {**decision.as_dict(), "confidence": test.confidence,
                  "arms": [{"label": a.label, "sent": a.n, "successes": a.successes, "revenue": a.total,
                            "value": a.value(test.winner_metric)} for a in figures]}
        res = s.execute(update(AbTest).where(AbTest.campaign_id == campaign_id, AbTest.state == WAITING)
                        .values(state=DECIDED, winner=winner, decision=record, decided_at=now)
                        .execution_options(synchronize_session=False))
        if res.rowcount != 1:
            return None
        # The rest of the segment: the fan-out starts over from the first customer (those who
        # have a delivery are skipped by its idempotency key); committed with the decision.
        s.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.running)
                  .values(cursor=0, fanout_done=False, fanout_heartbeat_at=now)
                  .execution_options(synchronize_session=False))
    log.info("campaign %s: A/B test decided: %s", campaign_id,
             f"{winner} won" if decision.winner else f"no winner; {winner} (the default) goes to the rest")
    port.enqueue_stored(port.FAN_OUT, campaign_id)
    return winner


def due(session: Session, *, now: datetime | None = None) -> list[int]:
    """Campaigns whose test wait is over (the sweeper's safety net for a lost decision message)."""
    now = now or utcnow()
    # ix_ab_tests_state_ends: few tests wait at any time.
    return list(session.execute(select(AbTest.campaign_id).join(Campaign, Campaign.id == AbTest.campaign_id)
                                .where(AbTest.state == WAITING, AbTest.test_ends_at <= now,
                                       Campaign.status == CampaignStatus.running)).scalars())


def sweep_hook(app) -> None:
    """Sweeper hook: decide every test whose wait is over (the decision message was lost or late)."""
    with app.session() as s:
        ids = due(s)
    for cid in ids:
        decide(app, cid)


def undecided(session: Session, campaign_id: int) -> bool:
    """True while the campaign's test has not been decided (the campaign is not complete yet)."""
    state = session.execute(select(AbTest.state).where(AbTest.campaign_id == campaign_id)).scalar_one_or_none()
    return state is not None and state != DECIDED


__all__ = ["bucket", "assign", "parse_variants", "parse_wait", "Settings", "plan", "Plan", "test_share_out",
           "schedule_decision", "arms", "decide", "due", "sweep_hook", "undecided"]
