"""Campaigns: a newsletter to a segment, validated at creation, sent, paused, resumed, cancelled.

Life cycle::

    draft --send--> running --(fan-out done, nothing pending)--> completed
      |  \\--send (send_at in the future)--> scheduled --(due)--> running
      |                 running/scheduled --pause--> paused --resume--> running/scheduled
      \\--cancel (from any state but completed)--> cancelled

* **Create** validates everything a send will need: the template is a newsletter kind,
  the segment exists and asks for the template's consent purpose, and for every locale
  among the segment's possible recipients the template compiles and renders with the
  campaign's data and a subject exists (``--subject`` or the template's own).
* **Send** moves the campaign to ``running`` and enqueues the fan-out
  (:mod:`mailer.campaigns.fanout`), which streams the segment in keyset batches and
  creates one delivery per recipient under the idempotency key
  ``campaign:<id>:<customer id>``; see there for resuming without resending.
* **Pause** (by a person, or by a brake: :mod:`mailer.delivery.brakes`, complaint or
  hard-bounce rate; recorded in ``campaign_actions`` either way) holds every delivery
  not yet sent (status ``held``), and the delivery gate
  holds any that a worker had already picked up; **resume** releases them.  **Cancel**
  cancels every delivery not yet sent.  Either way at most the mails already in a
  worker's hands at that instant (one per worker thread) still go out.
* **A/B tests**: :func:`create` with ``variants`` and ``ab`` stores the variants on the
  campaign and an ``ab_tests`` row; each variant is validated like the campaign itself
  (errors name ``variant[2].subject[en]``); see :mod:`mailer.campaigns.abtest`.
* Consent, suppressions and the frequency cap are checked again for each recipient at
  send time by :func:`mailer.delivery.gate`; the campaign never bypasses them.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from mailer import segments
from mailer.addresses import email_hash, normalize
from mailer.campaigns import abtest
from mailer.clock import utcnow
from mailer.delivery import brakes
from mailer.delivery.compose import personalized
from mailer.delivery.mail import CampaignOptions, MailContext
from mailer.errors import InvalidState, NotFound, TemplateError, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    AbTest,
    Campaign,
    CampaignStatus,
    ConsentState,
    Customer,
    Delivery,
    DeliveryStatus,
)
from mailer.queue import port
from mailer.queue.port import QUEUE_TRANSACTIONAL
from mailer.rendering import TRANSACTIONAL
from mailer.rendering.i18n import fallback_chain
from mailer.settings import Settings

log = logging.getLogger("mailer.campaigns")

#: Delivery statuses that still may (or may again) lead to a mail.
PENDING = (DeliveryStatus.queued, DeliveryStatus.scheduled, DeliveryStatus.sending, DeliveryStatus.held)
#: Longest campaign name, characters.
MAX_NAME_CHARS = 200

_LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# Not the locale rule (mailer.rendering.i18n.is_valid_locale) on purpose: this only decides
# whether ``--subject`` text starts with a locale prefix, and stays lower-case so that a
# subject such as "New=arrivals" is text, not a subject for locale "New".
_SUBJECT_LOCALE = re.compile(r"^([a-z]{2,3}(?:-[A-Za-z]{2,4})?)=(.+)$", re.S)


# -- parsing helpers ---------------------------------------------------------------------------
def parse_subjects(values: tuple[str, ...] | list[str] | None) -> dict[str, str]:
    """``--subject TEXT`` (every locale) and/or ``--subject pl=TEXT`` (one locale) -> {locale: text}.

    A plain text is stored under ``"*"``; it is the fallback for every locale without its own.
    """
    out: dict[str, str] = {}
    for raw in values or ():
        if not raw or not raw.strip():
            raise ValidationError("--subject must not be empty", field="subject")
        m = _SUBJECT_LOCALE.match(raw)
        loc, text = (m.group(1), m.group(2)) if m else ("*", raw)
        if "\n" in text or "\r" in text:
            raise ValidationError("--subject must be one line", field="subject")
        if loc in out:
            raise ValidationError(f"--subject given twice for {'every locale' if loc == '*' else loc}",
                                  field="subject")
        out[loc] = text.strip()
    return out


def parse_preheaders(values: tuple[str, ...] | list[str] | None) -> dict[str, str]:
    """``--preheader TEXT`` / ``--preheader pl=TEXT``: the same grammar as :func:`parse_subjects`."""
    try:
        return parse_subjects(values)
    except ValidationError as exc:
        raise ValidationError(str(exc).replace("--subject", "--preheader"), field="preheader") from exc


def parse_send_at(value: str | None, settings: Settings) -> datetime | None:
    """ISO-8601; a time without offset is read in the shop's time zone (MAILER_DEFAULT_TIMEZONE)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValidationError(f"--send-at {value!r} is not an ISO-8601 time (e.g. 2026-12-01T09:00+01:00)",
                              field="send_at") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_zone(settings.default_timezone, settings))
    return parsed.astimezone(UTC)


def parse_local_time(value: str | None) -> str | None:
    if value is None:
        return None
    if not _LOCAL_TIME.match(value.strip()):
        raise ValidationError(f"--local-time {value!r}: use HH:MM, 24-hour (e.g. 10:00)", field="local_time")
    return value.strip()


def _zone(name: str | None, settings: Settings):
    for candidate in (name, settings.default_timezone, "UTC"):
        if not candidate:
            continue
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return UTC


def next_local_time(start: datetime, hhmm: str, zone_name: str | None, settings: Settings) -> datetime:
    """The first moment at or after ``start`` when the clock in ``zone_name`` shows ``hhmm`` (UTC).

    Customers without a time zone get the shop's (MAILER_DEFAULT_TIMEZONE), so every
    recipient's mail goes out within the 24 hours after ``start``.
    """
    tz = _zone(zone_name, settings)
    hour, minute = (int(p) for p in hhmm.split(":"))
    local = start.astimezone(tz)
    day: date = local.date()
    for _ in range(3):
        target = datetime.combine(day, time(hour, minute), tzinfo=tz)
        # Round-trip through UTC: a wall time skipped by a DST change moves forward, as clocks do.
        target_utc = target.astimezone(UTC)
        if target_utc >= start:
            return target_utc
        day += timedelta(days=1)
    raise AssertionError("unreachable: a local time recurs every day")


# -- creation and validation ------------------------------------------------------------------
def _segment_locales(session: Session, purpose: str, settings: Settings) -> list[str]:
    """Locales among customers who could be in a segment of ``purpose`` (current consent).

    A superset of the segment's own locales (conditions are not applied), so validation
    never misses one; DISTINCT over the consent-state join touches only consenting customers.
    """
    rows = session.execute(
        select(Customer.locale).select_from(ConsentState)
        .join(Customer, Customer.id == ConsentState.customer_id)
        .where(ConsentState.purpose == purpose, ConsentState.granted.is_(True), Customer.email.is_not(None))
        .distinct()
    ).scalars().all()
    return sorted({loc or settings.default_locale for loc in rows} | {settings.default_locale})


def validate(session: Session, settings: Settings, renderer, *, template: str, segment_name: str,
             subjects: dict[str, str], data: dict, preheaders: dict[str, str] | None = None
             ) -> tuple[str, list[str]]:
    """Check a campaign can be sent; return (consent purpose, template locales that will be used)."""
    if not template.startswith("newsletter/"):
        raise ValidationError(f"--template {template!r}: campaigns send newsletter kinds "
                              f"(newsletter/<name>); known: "
                              f"{', '.join(k for k in renderer.kinds() if k.startswith('newsletter/')) or 'none'}",
                              field="template")
    spec = renderer.spec(template)
    segment = segments.load(settings, segment_name)
    if segment.purpose != spec.purpose:
        raise ValidationError(f"segment {segment_name!r} selects consent for {segment.purpose!r} but "
                              f"{template} is a {spec.purpose!r} mail; pick a segment for {spec.purpose!r}",
                              field="segment")
    renderer.validate(template, data)
    # Subjects are data, never code: the restricted, sandboxed grammar, checked before anything renders.
    for loc, text in subjects.items():
        renderer.check_text(template, text, field=subject_field(loc))
    for loc, text in (preheaders or {}).items():
        renderer.check_text(template, text, field=f"preheader[{loc}]")
    used: dict[str, list[str]] = {}
    for loc in _segment_locales(session, segment.purpose, settings):
        resolved = renderer.resolve_locale(template, loc)
        used.setdefault(resolved, []).append(loc)
    for resolved, asked in sorted(used.items()):
        subject = _subject_for(subjects, resolved)  # None: the template's own subject for the locale
        preheader = _subject_for(preheaders, resolved) if preheaders else None
        try:
            rendered = renderer.render(template, resolved, data, context=_probe_context(settings),
                                       subject=subject, preheader=preheader, cache_key=f"validate:{template}")
        except TemplateError as exc:
            raise TemplateError(f"{exc} (needed for customers with locale {', '.join(asked)})",
                                template=None) from exc
        if not rendered.subject.strip():
            raise ValidationError(f"the subject for locale {resolved} is empty; give --subject "
                                  f"{resolved}=TEXT or set [subject] {resolved} in kind.toml", field="subject")
    return segment.purpose, sorted(used)


def subject_field(locale_key: str) -> str:
    """How errors name a campaign subject: ``subject[pl]``, or ``subject[*]`` for every locale."""
    return f"subject[{locale_key}]"


def _subject_for(subjects: dict[str, str], locale: str) -> str | None:
    for loc in fallback_chain(locale):
        if loc in subjects:
            return subjects[loc]
    return subjects.get("*")


def _probe_context(settings: Settings) -> dict:
    return {"first_name": "Ann", "last_name": "Example", "email": "ann@example.com",
            "currency": settings.default_currency, "delivery_id": 0,
            "unsubscribe_url": settings.base_url + "/u/preview", "preferences_url": settings.base_url + "/p/preview"}


def subjects_for_render(subjects: dict[str, str], locales: list[str]) -> dict[str, str]:
    """Expand ``"*"`` into each template locale that has no subject of its own."""
    out = {k: v for k, v in subjects.items() if k != "*"}
    if "*" in subjects:
        for loc in locales:
            out.setdefault(loc, subjects["*"])
        out.setdefault("en", subjects["*"])
    return out


def foreign_subject_locales(renderer, settings: Settings, template: str, subjects: dict[str, str]) -> list[str]:
    """The template locales that would get the one shared subject (``"*"``, a ``--subject``
    without a locale) although they are not in its language.

    The shared text is taken to be in the default locale's language (``MAILER_DEFAULT_LOCALE``);
    every other-language locale without a subject of its own gets it over a body in its own
    language. Empty when there is no shared subject. ``campaign create`` warns with this list
    unless ``--subject-all-locales`` says it is deliberate; the console can show it too.
    """
    if "*" not in subjects:
        return []
    language = settings.default_locale.replace("_", "-").split("-")[0].lower()
    return sorted(loc for loc in renderer.spec(template).locales
                  if loc not in subjects and loc.replace("_", "-").split("-")[0].lower() != language)


def validate_variants(session: Session, settings: Settings, renderer, *, template: str, segment_name: str,
                      subjects: dict[str, str], data: dict, variants: list[dict]) -> list[dict]:
    """Check each A/B variant as a campaign of its own; return them labelled, subjects expanded per locale.

    A variant's subject or preheader overrides the campaign's (``--subject``) or the
    template's; its template replaces the campaign's.  Errors name the variant:
    ``variant[2].subject[en]``, ``variant[3].template``.
    """
    out: list[dict] = []
    seen: dict[str, int] = {}
    for i, variant in enumerate(abtest.labelled(variants), start=1):
        kind = variant.get("template") or template
        where = f"variant[{i}]"
        locales = renderer.spec(kind).locales if _is_kind(renderer, kind) else []
        # As the send path merges them: the variant's subjects, expanded per locale, over the campaign's.
        merged = {**subjects_for_render(subjects, renderer.spec(template).locales),
                  **subjects_for_render(variant["subjects"], locales)}
        try:
            for loc, text in variant["subjects"].items():
                renderer.check_text(kind, text, field=f"{where}.subject[{loc}]")
            for loc, text in variant["preheaders"].items():
                renderer.check_text(kind, text, field=f"{where}.preheader[{loc}]")
            validate(session, settings, renderer, template=kind, segment_name=segment_name,
                     subjects=merged, data=data,
                     preheaders=subjects_for_render(variant["preheaders"], locales))
        except ValidationError as exc:
            field = getattr(exc, "field", None) or ""
            field = "template" if field == "kind" else field  # an unknown kind is the variant's template
            named = field if field.startswith(where) else f"{where}.{field}" if field else where
            raise ValidationError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc),
                                  field=named) from exc
        except TemplateError as exc:
            raise TemplateError(f"{where} ({kind}): {exc}", template=None) from exc
        stored = {"label": variant["label"], "template": kind,
                  "subjects": subjects_for_render(variant["subjects"], locales),
                  "preheaders": subjects_for_render(variant["preheaders"], locales)}
        key = repr((kind, sorted(variant["subjects"].items()), sorted(variant["preheaders"].items())))
        if key in seen:
            raise ValidationError(f"{where} is the same as variant[{seen[key]}]; variants must differ", field=where)
        seen[key] = i
        out.append(stored)
    return out


def create(session: Session, settings: Settings, renderer, *, name: str, template: str, segment: str,
           subjects: dict[str, str] | None = None, data: dict | None = None, send_at: datetime | None = None,
           local_time: str | None = None, tracking: bool = True,
           preheaders: dict[str, str] | None = None, variants: list[dict] | None = None,
           ab: abtest.Settings | None = None) -> Campaign:
    """Validate and store a draft campaign (with ``variants`` and ``ab``: an A/B test)."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_CHARS or any(c in name for c in "\r\n\x00"):
        raise ValidationError(f"--name must be 1-{MAX_NAME_CHARS} characters on one line", field="name")
    subjects = dict(subjects or {})
    data = dict(data if data is not None else renderer.sample(template) if _is_kind(renderer, template) else {})
    local_time = parse_local_time(local_time)
    preheaders = dict(preheaders or {})
    purpose, locales = validate(session, settings, renderer, template=template, segment_name=segment,
                                subjects=subjects, data=data, preheaders=preheaders)
    if send_at is not None and send_at.tzinfo is None:
        raise ValidationError("send_at must carry a time zone", field="send_at")
    stored_variants = None
    if variants or ab is not None:
        if not variants or ab is None:
            raise ValidationError("an A/B test needs --variant (2-4) and --test-share, --winner-metric",
                                  field="variant" if not variants else "test_share")
        if not abtest.MIN_VARIANTS <= len(variants) <= abtest.MAX_VARIANTS:
            raise ValidationError(f"an A/B test has {abtest.MIN_VARIANTS}-{abtest.MAX_VARIANTS} variants, "
                                  f"got {len(variants)}", field="variant")
        ab.check()
        if not tracking:
            raise ValidationError(f"--winner-metric {ab.winner_metric} needs tracking (opens and clicks are "
                                  f"what it counts or attributes revenue by); drop --no-tracking",
                                  field="winner_metric")
        stored_variants = validate_variants(session, settings, renderer, template=template, segment_name=segment,
                                            subjects=subjects, data=data, variants=variants)
    campaign = Campaign(name=name, template=template, segment=segment, purpose=purpose,
                        subjects=subjects_for_render(subjects, renderer.spec(template).locales),
                        preheaders=subjects_for_render(preheaders, renderer.spec(template).locales),
                        data=data, status=CampaignStatus.draft,
                        send_at=send_at, local_time=local_time, tracking=tracking, cursor=0, fanout_done=False,
                        variants=stored_variants)
    session.add(campaign)
    session.flush()
    if stored_variants is not None:
        session.add(AbTest(campaign_id=campaign.id, test_share_percent=float(ab.test_share_percent),
                           winner_metric=ab.winner_metric, wait_s=int(ab.wait_s), confidence=float(ab.confidence),
                           state=abtest.TESTING))
        session.flush()
    log.info("campaign %s created: %s -> segment %s (%s)", campaign.id, template, segment, ", ".join(locales))
    return campaign


def _is_kind(renderer, template: str) -> bool:
    try:
        renderer.spec(template)
        return True
    except ValidationError:
        return False


def get(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign with id {campaign_id}")
    return campaign


def list_campaigns(session: Session) -> list[Campaign]:
    return list(session.execute(select(Campaign).order_by(Campaign.id.desc())).scalars())


# -- state changes ----------------------------------------------------------------------------
def send(session: Session, settings: Settings, campaign_id: int, *, now: datetime | None = None) -> Campaign:
    """Start sending (or schedule for ``send_at``); the caller enqueues the fan-out after commit."""
    now = now or utcnow()
    c = get(session, campaign_id)
    if c.status is not CampaignStatus.draft:
        raise InvalidState(f"campaign {c.id} is {c.status.value}; only a draft can be sent "
                           f"(use resume for a paused one)")
    if c.send_at is not None and c.send_at > now:
        c.status = CampaignStatus.scheduled
    else:
        c.status = CampaignStatus.running
        c.started_at = now
        c.fanout_heartbeat_at = now
    return c


def pause(session: Session, campaign_id: int, *, actor: str = "cli") -> int:
    """Pause: hold every delivery not yet sent, recorded with ``actor``; returns how many were held."""
    c = get(session, campaign_id)
    if c.status not in (CampaignStatus.running, CampaignStatus.scheduled):
        raise InvalidState(f"campaign {c.id} is {c.status.value}; only a running or scheduled one can be paused")
    held = brakes.pause_campaign(session, c.id, actor=actor)
    if held is None:
        raise InvalidState(f"campaign {c.id} was paused or finished meanwhile")
    return held


def release_held(session: Session, campaign_id: int) -> None:
    """Held deliveries back to queued (or scheduled, if they wait for a local time)."""
    now = utcnow()
    # Two UPDATEs on (campaign_id, status): local-time rows keep their send_after.
    session.execute(update(Delivery)
                    .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.held,
                           Delivery.send_after.is_(None))
                    .values(status=DeliveryStatus.queued, reason=None, updated_at=now)
                    .execution_options(synchronize_session=False))
    session.execute(update(Delivery)
                    .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.held,
                           Delivery.send_after.is_not(None))
                    .values(status=DeliveryStatus.scheduled, reason=None, updated_at=now)
                    .execution_options(synchronize_session=False))


def resume(session: Session, campaign_id: int, *, now: datetime | None = None, actor: str = "cli") -> Campaign:
    """Resume a paused campaign (also one a brake paused: always an explicit act, recorded with
    ``actor``); the caller enqueues its deliveries and fan-out after commit."""
    now = now or utcnow()
    c = get(session, campaign_id)
    if c.status is not CampaignStatus.paused:
        raise InvalidState(f"campaign {c.id} is {c.status.value}; only a paused one can be resumed")
    brakes.record_resume(session, c, actor=actor, now=now)
    if c.started_at is None and c.send_at is not None and c.send_at > now:
        c.status = CampaignStatus.scheduled
    else:
        c.status = CampaignStatus.running
        c.started_at = c.started_at or now
        c.fanout_heartbeat_at = now
    session.flush()
    release_held(session, c.id)
    return c


def cancel(session: Session, campaign_id: int) -> int:
    """Cancel: no further mail of this campaign is sent; returns how many deliveries were cancelled."""
    c = get(session, campaign_id)
    if c.status in (CampaignStatus.completed, CampaignStatus.cancelled):
        raise InvalidState(f"campaign {c.id} is already {c.status.value}")
    c.status = CampaignStatus.cancelled
    c.finished_at = utcnow()
    session.flush()
    # Everything not yet in a worker's hands, over the (campaign_id, status) index.
    res = session.execute(update(Delivery)
                          .where(Delivery.campaign_id == c.id,
                                 Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.scheduled,
                                                      DeliveryStatus.held]))
                          .values(status=DeliveryStatus.cancelled, reason="campaign cancelled",
                                  updated_at=utcnow())
                          .execution_options(synchronize_session=False))
    return res.rowcount


def queued_ids(session: Session, campaign_id: int, *, after_id: int = 0, limit: int = 10_000) -> list[int]:
    """Ids of the campaign's queued deliveries, in id order (for re-enqueueing after resume)."""
    # (campaign_id, status) index, then id order for keyset paging by the caller.
    return list(session.execute(select(Delivery.id)
                                .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.queued,
                                       Delivery.id > after_id)
                                .order_by(Delivery.id).limit(limit)).scalars())


# -- which subject each locale gets (the console's fallback warning) ---------------------------
@dataclass(frozen=True)
class LocalePlan:
    """What the customers of one locale present in a segment will get."""

    #: The customers' locale (a customer without one counts under MAILER_DEFAULT_LOCALE).
    locale: str
    customers: int
    #: The template locale their mail is rendered in (the fallback chain applies).
    template_locale: str
    #: Where their subject comes from: a locale key of ``subjects``, ``"*"`` (for every
    #: locale) or ``None`` (the template's own subject for ``template_locale``).
    subject_from: str | None

    @property
    def fallback(self) -> bool:
        """True when they get a subject or body not written for their own locale."""
        if self.subject_from is None:
            return self.template_locale != self.locale
        return self.subject_from != self.locale


def locale_plan(renderer, template: str, subjects: dict[str, str], present: dict[str, int]) -> list[LocalePlan]:
    """For each locale in ``present`` (``segments.locales``), the template locale and subject it gets.

    Uses the same resolution as sending: :meth:`Renderer.resolve_locale`, then the subject
    chosen along the fallback chain of the template locale, then the shared ``"*"`` one.
    """
    out = []
    for loc, n in sorted(present.items()):
        resolved = renderer.resolve_locale(template, loc)
        source = next((k for k in fallback_chain(resolved) if k in subjects), None)
        if source is None and "*" in subjects:
            source = "*"
        out.append(LocalePlan(locale=loc, customers=n, template_locale=resolved, subject_from=source))
    return out


# -- test send --------------------------------------------------------------------------------
#: Most seed addresses in one test send.
MAX_TEST_SEEDS = 20
#: Idempotency-key prefix of test sends; their rows are not counted in the campaign's figures.
TEST_KEY_PREFIX = "test:campaign:"
_SEED_SPLIT = re.compile(r"[\s,;]+")


def parse_seeds(text: str | list[str] | None) -> list[str]:
    """Seed addresses from text (one per line, or separated by commas, semicolons or spaces)."""
    raw = text if isinstance(text, list) else _SEED_SPLIT.split((text or "").strip())
    out: list[str] = []
    for item in (r.strip() for r in raw):
        if not item:
            continue
        try:
            address = normalize(item)
        except ValidationError as exc:
            raise ValidationError(f"seed address {item[:80]!r} is not a valid e-mail address", field="seeds") from exc
        if address not in out:
            out.append(address)
    if not out:
        raise ValidationError("give at least one seed address", field="seeds")
    if len(out) > MAX_TEST_SEEDS:
        raise ValidationError(f"at most {MAX_TEST_SEEDS} seed addresses per test send", field="seeds")
    return out


def test_send(session: Session, settings: Settings, renderer, campaign_id: int, seeds: list[str], *,
              locale: str | None = None) -> list[int]:
    """Store one delivery of the campaign's mail per seed address; the caller enqueues them after commit.

    A test send goes through the real send path (compose, DKIM, relay, its delivery row)
    with the campaign's subjects, preheaders and data, in ``locale``. It is a proof for the
    shop's own staff, not marketing to a customer: it is sent as ``transactional`` (so no
    consent is asked, no open or click is tracked and the campaign's figures leave it out:
    :func:`mailer.campaigns.reports.figures` counts only the campaign's purpose), but a
    suppressed seed address is still not sent to.
    """
    c = get(session, campaign_id)
    if c.status in (CampaignStatus.cancelled,):
        raise InvalidState(f"campaign {c.id} is cancelled; a test send needs a campaign that can still be sent")
    loc = renderer.resolve_locale(c.template, locale or settings.default_locale)
    salt = address_hash_salt(settings)
    ids: list[int] = []
    for address in seeds:
        # Unique index on customers.email: one probe per seed, to greet a known customer by name.
        customer = session.execute(select(Customer).where(Customer.email == address)).scalar_one_or_none()
        d = Delivery(idempotency_key=f"{TEST_KEY_PREFIX}{c.id}:{uuid.uuid4().hex}", kind=c.template,
                     campaign_id=c.id, customer_id=customer.id if customer else None, to_address=address,
                     to_hash=email_hash(address, salt), locale=loc, data={}, purpose=TRANSACTIONAL,
                     queue=QUEUE_TRANSACTIONAL, status=DeliveryStatus.queued)
        session.add(d)
        session.flush()
        ids.append(d.id)
    log.info("campaign %s: test send to %d seed address(es) in %s", c.id, len(ids), loc)
    return ids


def enqueue_test_sends(delivery_ids: list[int]) -> int:
    """After commit: hand each stored test-send delivery to the transactional queue; how many."""
    return sum(1 for i in delivery_ids if port.enqueue_delivery(i, QUEUE_TRANSACTIONAL))


def confirmation_count(session: Session, settings: Settings, campaign_id: int, action: str) -> int:
    """How many mails an action concerns, for the confirmation that states the count.

    ``send``: the segment's recipients right now; ``pause`` and ``cancel``: the mails not yet
    sent (deliveries pending plus recipients the fan-out has not reached); ``resume``: the
    held deliveries plus recipients not yet reached.
    """
    c = get(session, campaign_id)
    mine = (Delivery.campaign_id == c.id, Delivery.purpose == c.purpose)

    def n(statuses) -> int:
        # Counted over ix_deliveries_campaign_status.
        return session.execute(select(func.count()).select_from(Delivery)
                               .where(*mine, Delivery.status.in_(statuses))).scalar_one()

    remaining = 0
    if not c.fanout_done:
        made = session.execute(select(func.count()).select_from(Delivery).where(*mine)).scalar_one()
        remaining = max(0, segments.count(session, settings, segments.load(settings, c.segment)) - made)
    if action == "send":
        return remaining
    if action == "resume":
        return n([DeliveryStatus.held]) + remaining
    if action in ("pause", "cancel"):
        return n(PENDING) + remaining
    raise ValidationError(f"unknown action {action!r}", field="action")


# -- preview ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preview:
    subject: str
    locale: str
    html: str
    text: str
    preheader: str = ""


def preview(session: Session, settings: Settings, renderer, campaign_id: int, email: str,
            variant: str | None = None, *, locale: str | None = None) -> Preview:
    """Render the campaign as ``email`` would receive it (their name and locale if known);
    an A/B test's ``variant`` (label), by default the first.

    ``locale`` renders it in that locale instead of the recipient's (the console's per-locale preview).
    """

    c = get(session, campaign_id)
    address = normalize(email)
    customer = session.execute(select(Customer).where(Customer.email == address)).scalar_one_or_none()
    kind = c.template
    if c.variants:
        labels = [v["label"] for v in c.variants]
        variant = (variant or labels[0]).upper()
        if variant not in labels:
            raise ValidationError(f"--variant {variant!r}: campaign {c.id} has variants {', '.join(labels)}",
                                  field="variant")
        kind = next(v.get("template") or c.template for v in c.variants if v["label"] == variant)
    elif variant is not None:
        raise ValidationError(f"campaign {c.id} has no A/B variants", field="variant")
    probe = Delivery(id=0, kind=kind, variant=variant, campaign_id=c.id,
                     customer_id=customer.id if customer else None,
                     to_address=address, to_hash=email_hash(address, address_hash_salt(settings)),
                     locale=locale or (customer.locale if customer else None) or settings.default_locale,
                     data={}, purpose=c.purpose, created_at=utcnow())
    # The campaign as read just now (not the send path's per-process cache of its options).
    rendered, _ = personalized(settings, renderer, MailContext.of(probe, customer, campaign=CampaignOptions.of(c)))
    return Preview(subject=rendered.subject, locale=rendered.locale, html=rendered.html, text=rendered.text,
                   preheader=rendered.preheader)


# -- housekeeping (sweeper hook) ---------------------------------------------------------------
def due_and_stalled(session: Session, settings: Settings, *, now: datetime | None = None
                    ) -> tuple[list[int], list[int]]:
    """Scheduled campaigns now due (moved to running) and running fan-outs silent too long.

    A conditional UPDATE per campaign decides which worker's sweeper restarts it, so
    several workers do not start the same fan-out twice (and if they did, the fan-out's
    own optimistic cursor check lets only one advance).
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=settings.sweep_stale_s)
    started: list[int] = []
    # Few campaigns are ever scheduled or running at once: a plain scan of campaigns.
    for cid in session.execute(select(Campaign.id).where(Campaign.status == CampaignStatus.scheduled,
                                                         Campaign.send_at <= now)).scalars():
        res = session.execute(update(Campaign).where(Campaign.id == cid, Campaign.status == CampaignStatus.scheduled)
                              .values(status=CampaignStatus.running, started_at=now, fanout_heartbeat_at=now)
                              .execution_options(synchronize_session=False))
        if res.rowcount == 1:
            started.append(cid)
    stalled: list[int] = []
    rows = session.execute(select(Campaign.id, Campaign.fanout_heartbeat_at)
                           .where(Campaign.status == CampaignStatus.running, Campaign.fanout_done.is_(False),
                                  or_(Campaign.fanout_heartbeat_at.is_(None),
                                      Campaign.fanout_heartbeat_at < stale))).all()
    for cid, beat in rows:
        cond = Campaign.fanout_heartbeat_at.is_(None) if beat is None else Campaign.fanout_heartbeat_at == beat
        res = session.execute(update(Campaign).where(Campaign.id == cid, cond)
                              .values(fanout_heartbeat_at=now).execution_options(synchronize_session=False))
        if res.rowcount == 1:
            stalled.append(cid)
    return started, stalled


def finish_completed(session: Session, *, now: datetime | None = None) -> list[int]:
    """Running campaigns whose fan-out is done and nothing is pending become completed."""
    now = now or utcnow()
    done: list[int] = []
    for c in session.execute(select(Campaign).where(Campaign.status == CampaignStatus.running,
                                                    Campaign.fanout_done.is_(True))).scalars():
        # EXISTS on the (campaign_id, status) index: stops at the first pending delivery.
        pending = session.execute(select(Delivery.id).where(Delivery.campaign_id == c.id,
                                                            Delivery.status.in_(PENDING)).limit(1)).first()
        # An A/B test that has only sent its test share is not complete: the rest waits for the winner.
        if pending is None and not (c.variants and abtest.undecided(session, c.id)):
            c.status = CampaignStatus.completed
            c.finished_at = now
            done.append(c.id)
    return done


def held_in_running(session: Session) -> list[int]:
    """Running campaigns that still have held deliveries (a worker held one while resume ran)."""
    return list(session.execute(
        select(Delivery.campaign_id).join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Campaign.status.in_([CampaignStatus.running, CampaignStatus.scheduled]),
               Delivery.status == DeliveryStatus.held).distinct()).scalars())


__all__ = ["create", "validate", "send", "pause", "resume", "cancel", "preview", "get", "list_campaigns",
           "next_local_time", "parse_subjects", "parse_preheaders", "parse_send_at", "parse_local_time",
           "queued_ids", "locale_plan", "LocalePlan", "parse_seeds", "test_send", "enqueue_test_sends",
           "confirmation_count"]

