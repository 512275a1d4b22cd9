"""The database schema, as SQLAlchemy 2.0 mapped classes.

Schema changes go through Alembic migrations in ``mailer/migrations``; this
module and the newest migration must describe the same tables (a test checks).

Tables and what they are for:

* ``customers``        who we write to; ``email`` is NULL after erasure, ``email_hash`` stays.
* ``customer_tags``    one row per (customer, tag) so tag conditions are index lookups.
* ``consent_events``   append-only, hash-chained consent ledger (never UPDATE/DELETE).
* ``consent_evidence`` the personal parts of an event's proof (IP, user agent, address);
                       erasable, while the chain covers only their salted digests.
* ``consent_state``    current state per (customer, purpose), derived by a database trigger
                       from each appended event (guard triggers refuse every other write),
                       so "has consent now" is one indexed lookup.
* ``consent_chain_formats`` where each chain format starts (v2 hashes also cover customer_id).
* ``consent_requests`` pending double opt-in confirmations.
* ``campaigns``        newsletters to a segment, with a keyset checkpoint for resuming.
* ``ab_tests``         a campaign's A/B test: share, winning metric, wait, state and decision.
* ``deliveries``       one row per mail we intend to send; unique idempotency key.
* ``suppressions``     addresses never to mail again (by salted hash; address kept until erasure).
* ``bounces``          every bounce / complaint with its raw report.
* ``tracking_events``  opens, clicks, unsubscribes (purged by retention).
* ``campaign_tracking_totals``, ``campaign_tracking_buckets``, ``campaign_link_counts``
                       the campaign report's counts (per kind, per minute/hour, per link),
                       kept by triggers on tracking_events so the report never reads events.
* ``api_keys``         hashed bearer keys for the HTTP API, with their scopes and last use.
* ``wordings``         every version of every consent wording seen, with the SHA-256 of its
                       exact text (a grant's ``wording_sha256`` points here).
* ``idempotency_records`` HTTP API responses per Idempotency-Key, replayed on a retry.
* ``shop_events``      events received from shops, idempotent.
* ``reward_codes``     discount and gift-card codes, each given to at most one customer.
* ``csat_ratings``     one rating per order (last click wins).
* ``orders``           the shop's orders (events and imports), in the order's and the shop's currency;
                       the prediction models are fitted on them (mailer/customers/orders.py).
* ``prediction_fits``  every fit of the prediction models: when, as of which day, parameters.
* ``console_users``    people who log in to /console: role, Argon2 password hash, optional TOTP secret.
* ``console_sessions`` server-side console sessions (only the SHA-256 of the cookie is stored), CSRF token.
* ``console_tokens``   one-time set-password links (SHA-256 of the token, expiry, used once).
* ``audit_log``        append-only, hash-chained record of every console action that changes or
                       exports something (guard triggers refuse UPDATE and DELETE).
* ``attributions``     one row per attributed order: the campaign or automation send it goes to
                       (last click, else last human open), amount and currency, reversal
                       (mailer/customers/attribution.py).
* ``campaign_actions`` every pause and resume of a campaign: who or which brake, and the figures.
* ``instance_secrets`` secrets born with the database (the address-hash salt); see
                       mailer/instance_secrets.py.  Back them up with the data.
* ``worker_heartbeats`` one row per running worker process, its heartbeat on the database's
                       clock; a silent one is dead and its taken messages go back to work
                       (mailer/delivery/heartbeats.py).
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mailer.clock import utcnow

#: BIGINT on PostgreSQL, INTEGER on SQLite (so it stays an auto-incrementing rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


def _enum(cls: type[enum.Enum]):
    return Enum(cls, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e],
                validate_strings=True)


class SpendTier(str, enum.Enum):
    high = "high"
    medium = "medium"
    low = "low"


class ChurnRisk(str, enum.Enum):
    low = "low"
    medium = "medium"
    high = "high"


class OrderStatus(str, enum.Enum):
    placed = "placed"
    cancelled = "cancelled"
    refunded = "refunded"


class ConsentAction(str, enum.Enum):
    granted = "granted"
    withdrawn = "withdrawn"


class LawfulBasis(str, enum.Enum):
    consent = "consent"
    soft_opt_in = "soft_opt_in"


class ConsentSource(str, enum.Enum):
    checkout = "checkout"
    signup_form = "signup_form"
    api = "api"
    import_ = "import"
    unsubscribe_link = "unsubscribe_link"
    preference_centre = "preference_centre"
    admin = "admin"
    complaint = "complaint"
    #: From a shop's webhooks (mailer.connectors); the shop is in the proof's form_id.
    shopify = "shopify"
    woocommerce = "woocommerce"


class CampaignStatus(str, enum.Enum):
    draft = "draft"
    scheduled = "scheduled"
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"


class DeliveryStatus(str, enum.Enum):
    scheduled = "scheduled"     # waits for send_after (automations, local time)
    queued = "queued"           # enqueued, not yet claimed
    sending = "sending"         # claimed under a lease
    sent = "sent"               # SMTP accepted
    failed = "failed"           # gave up (permanent error or retries exhausted)
    bounced = "bounced"         # accepted, later bounced (DSN)
    suppressed = "suppressed"   # not sent: suppression list
    skipped = "skipped"         # not sent: no consent, frequency cap
    cancelled = "cancelled"     # not sent: cancelled by a rule or a person
    held = "held"               # not sent yet: its campaign is paused; resume releases it (campaigns)


class SuppressionReason(str, enum.Enum):
    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"
    complaint = "complaint"
    unsubscribe = "unsubscribe"
    erased = "erased"
    manual = "manual"


class TrackingKind(str, enum.Enum):
    open = "open"
    machine_open = "machine_open"
    click = "click"
    unsubscribe = "unsubscribe"
    complaint = "complaint"
    bounce = "bounce"


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    locale: Mapped[str | None] = mapped_column(String(20))
    timezone: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str | None] = mapped_column(String(2))
    total_spent: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal("0"))
    currency: Mapped[str | None] = mapped_column(String(3))
    orders_count: Mapped[int] = mapped_column(Integer, default=0)
    last_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    predicted_spend_tier: Mapped[SpendTier | None] = mapped_column(_enum(SpendTier))
    # Prediction figures written by `mailer predict score` (mailer/customers/predictions.py);
    # NULL for a customer the model cannot score: scores are never invented.
    p_alive: Mapped[float | None] = mapped_column(Float)
    expected_orders_90d: Mapped[float | None] = mapped_column(Float)
    expected_orders_365d: Mapped[float | None] = mapped_column(Float)
    predicted_clv: Mapped[float | None] = mapped_column(Float)
    expected_next_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    churn_risk: Mapped[ChurnRisk | None] = mapped_column(_enum(ChurnRisk))
    predictions_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now(),
                                                 onupdate=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    tags: Mapped[list[CustomerTag]] = relationship(back_populates="customer", cascade="all, delete-orphan",
                                                     lazy="selectin")

    __table_args__ = (
        # Segment conditions filter on these; see mailer/segments/.
        Index("ix_customers_total_spent", "total_spent"),
        Index("ix_customers_orders_count", "orders_count"),
        Index("ix_customers_last_order_at", "last_order_at"),
        Index("ix_customers_created_at", "created_at"),
        Index("ix_customers_predicted_clv", "predicted_clv"),
        Index("ix_customers_p_alive", "p_alive"),
        Index("ix_customers_churn_risk", "churn_risk"),
        Index("ix_customers_expected_next_order_at", "expected_next_order_at"),
        Index("ix_customers_predicted_spend_tier", "predicted_spend_tier"),
        # Console customer search (mailer/compliance/search.py, migration 0013): a name prefix is
        # a range over lower(name); the unique index on email serves an e-mail prefix the same way.
        Index("ix_customers_first_name_lower", func.lower(text("first_name"))),
        Index("ix_customers_last_name_lower", func.lower(text("last_name"))),
    )

    @property
    def tag_names(self) -> list[str]:
        return sorted(t.tag for t in self.tags)

    def __repr__(self) -> str:
        return f"<Customer id={self.id} email={self.email!r} locale={self.locale!r}>"


class CustomerTag(Base):
    __tablename__ = "customer_tags"

    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"),
                                             primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)

    customer: Mapped[Customer] = relationship(back_populates="tags")

    __table_args__ = (Index("ix_customer_tags_tag", "tag", "customer_id"),)

    def __repr__(self) -> str:
        return f"<CustomerTag customer_id={self.customer_id} tag={self.tag!r}>"


class ConsentEvent(Base):
    """One appended consent change. The chain hash covers every column but ``id``, the
    wording text (it enters as ``wording_sha256``) and, in format 1 only, ``customer_id``;
    personal proof lives in ``consent_evidence`` and enters the chain as salted digests,
    so erasure leaves the chain intact."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Position in the chain, 1-based, gapless.
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    #: Salted hash of the normalized address at the time of the event.
    subject_hash: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(100))
    action: Mapped[ConsentAction] = mapped_column(_enum(ConsentAction))
    basis: Mapped[LawfulBasis] = mapped_column(_enum(LawfulBasis))
    source: Mapped[ConsentSource] = mapped_column(_enum(ConsentSource))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    form_id: Mapped[str | None] = mapped_column(String(200))
    wording: Mapped[str | None] = mapped_column(Text)
    wording_version: Mapped[str | None] = mapped_column(String(50))
    wording_sha256: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ip_digest: Mapped[str | None] = mapped_column(String(64))
    user_agent_digest: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: Chain format of this event's hash: 1 (before migration 0002) or 2 (covers customer_id).
    chain_format: Mapped[int] = mapped_column(SmallInteger, default=2, server_default="1")

    __table_args__ = (
        # "Latest event for (customer, purpose) at time T" walks this index backwards.
        Index("ix_consent_events_customer_purpose", "customer_id", "purpose", "occurred_at", "id"),
        Index("ix_consent_events_occurred_at", "occurred_at"),
        # GDPR access/erasure and `consent export --email` find a person's events by hash.
        Index("ix_consent_events_subject_hash", "subject_hash"),
    )

    def __repr__(self) -> str:
        return (f"<ConsentEvent seq={self.seq} customer_id={self.customer_id} purpose={self.purpose!r} "
                f"action={self.action.value if self.action else None}>")


class ConsentChainFormat(Base):
    """Where a chain format starts (rows written by migrations only; triggers refuse changes)."""

    __tablename__ = "consent_chain_formats"

    chain_format: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    def __repr__(self) -> str:
        return f"<ConsentChainFormat v{self.chain_format} from seq {self.first_seq}>"


class ConsentDeriveBatch(Base):
    """An open SQLite import batch: events with seq in ``[first_seq, last_seq]`` get their
    consent_state derived when this row is deleted, set-based, instead of row by row
    (migration 0019).  ``pending`` is a deferred foreign key to a row that cannot exist,
    so a transaction cannot commit while a batch is open; the table is empty at rest.
    PostgreSQL refuses rows here (it derives per statement)."""

    __tablename__ = "consent_derive_batches"

    first_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    pending: Mapped[int] = mapped_column(BigInteger, ForeignKey("consent_derive_batches.first_seq",
                                                                name="fk_consent_derive_batches_open",
                                                                deferrable=True, initially="DEFERRED"),
                                         server_default="0")

    __table_args__ = (
        CheckConstraint("first_seq > 0 AND last_seq >= first_seq", name="ck_consent_derive_batches_range"),
        CheckConstraint("pending = 0", name="ck_consent_derive_batches_pending"),
    )

    def __repr__(self) -> str:
        return f"<ConsentDeriveBatch seq {self.first_seq}-{self.last_seq}>"


class ConsentEvidence(Base):
    """Personal proof for a consent event; deleted on erasure."""

    __tablename__ = "consent_evidence"

    event_id: Mapped[int] = mapped_column(BigId, ForeignKey("consent_events.id"), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<ConsentEvidence event_id={self.event_id}>"


class ConsentState(Base):
    """Current consent per (customer, purpose): the latest event's outcome.

    Written only by the ledger's derivation triggers (``consent_events_derive_state``,
    migrations 0002 and 0019: per statement on PostgreSQL, per row or per closed import
    batch on SQLite); guard
    triggers refuse any INSERT/UPDATE that is not the ledger's derivation, and DELETE
    (on PostgreSQL the INSERT/UPDATE guard checks each statement's rows at once, 0025).
    ``event_id`` names the event the row derives from; readers join it (primary key) to
    confirm it is a grant of this customer and purpose."""

    __tablename__ = "consent_state"

    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"),
                                             primary_key=True)
    purpose: Mapped[str] = mapped_column(String(100), primary_key=True)
    granted: Mapped[bool] = mapped_column(Boolean)
    basis: Mapped[LawfulBasis] = mapped_column(_enum(LawfulBasis))
    event_id: Mapped[int] = mapped_column(BigId, ForeignKey("consent_events.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # Segments join on (purpose, granted) and then customer_id.
        Index("ix_consent_state_purpose", "purpose", "granted", "customer_id"),
    )

    def __repr__(self) -> str:
        return f"<ConsentState customer_id={self.customer_id} purpose={self.purpose!r} granted={self.granted}>"


class ConsentRequest(Base):
    """A double opt-in waiting for its confirmation link to be followed."""

    __tablename__ = "consent_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(100))
    basis: Mapped[LawfulBasis] = mapped_column(_enum(LawfulBasis), default=LawfulBasis.consent)
    source: Mapped[ConsentSource] = mapped_column(_enum(ConsentSource))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    event_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("consent_events.id"))
    proof: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def __repr__(self) -> str:
        return f"<ConsentRequest id={self.id} customer_id={self.customer_id} purpose={self.purpose!r}>"


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    template: Mapped[str] = mapped_column(String(200))
    segment: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(String(100))
    #: Subject per locale ({"en": "...", "pl": "..."}); empty means the template's subjects.
    subjects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Preheader per locale, the same shape as ``subjects``; empty means the template's preheaders.
    preheaders: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[CampaignStatus] = mapped_column(_enum(CampaignStatus), default=CampaignStatus.draft)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: "HH:MM": deliver at this local time in each recipient's zone.
    local_time: Mapped[str | None] = mapped_column(String(5))
    tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    #: A/B test variants, in order (the first is the default), or None:
    #: [{"label": "A", "template": ..., "subjects": {locale: text}, "preheaders": {locale: text}}].
    variants: Mapped[list[Any] | None] = mapped_column(JSON)
    #: Keyset checkpoint: the last customer id fanned out.
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    fanout_done: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Last time a fan-out step committed; the sweeper hook restarts a fan-out silent for too long.
    fanout_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The brake that paused it (``complaint_rate``, ``hard_bounce_rate``); NULL when a person paused it
    #: or it runs. Cleared by resume; ``campaign_actions`` keeps the history.
    brake: Mapped[str | None] = mapped_column(String(30))
    #: The figures the brake acted on (sent, complaints, hard bounces, rates, thresholds).
    brake_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    def __repr__(self) -> str:
        return f"<Campaign id={self.id} name={self.name!r} status={self.status.value if self.status else None}>"


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: campaign:<id>:<customer>, notice:<kind>:<key>, or notice:<kind>:sha256(content).
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(100))
    campaign_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("campaigns.id"))
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    to_address: Mapped[str | None] = mapped_column(String(320))
    to_hash: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: "transactional" or the consent purpose the mail needs.
    purpose: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(20), default="transactional")
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), default=DeliveryStatus.queued)
    #: Why it was skipped/suppressed/failed/cancelled, in words.
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    send_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Pending scheduled sends with the same group are cancelled together (automations).
    cancel_group: Mapped[str | None] = mapped_column(String(255))
    automation: Mapped[str | None] = mapped_column(String(100))
    #: A/B variant label ("A".."D") of a campaign mail; "holdout" for an automation send kept
    #: back on purpose (recorded, never mailed); None otherwise.
    variant: Mapped[str | None] = mapped_column(String(10))
    message_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    relay: Mapped[str | None] = mapped_column(String(255))
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        # Campaign progress counts group by status within one campaign.
        Index("ix_deliveries_campaign_status", "campaign_id", "status"),
        # Frequency cap: marketing mails to a customer since T.
        Index("ix_deliveries_customer_sent", "customer_id", "sent_at"),
        # The scheduler picks due scheduled rows in time order.
        Index("ix_deliveries_status_send_after", "status", "send_after"),
        Index("ix_deliveries_cancel_group", "cancel_group"),
        # GDPR access/erasure: every mail to an address, also when no customer row links it.
        Index("ix_deliveries_to_hash", "to_hash"),
        # Dashboard: mail sent since T by kind is a range scan of this index alone.
        Index("ix_deliveries_sent_at_kind", "sent_at", "kind"),
        # Dashboard: outcomes of the last days (per status, rows touched since T).
        Index("ix_deliveries_status_updated", "status", "updated_at"),
        # Dashboard: queue depth and the oldest waiting mail per status.
        Index("ix_deliveries_status_created", "status", "created_at"),
    )

    def __repr__(self) -> str:
        return f"<Delivery id={self.id} kind={self.kind!r} status={self.status.value if self.status else None}>"


class AbTest(Base):
    """A campaign's A/B test: its settings, where it stands, and the decision once made.

    ``state``: ``testing`` (the test share is being fanned out), ``waiting`` (the test
    share is out; the winner is picked at ``test_ends_at``), ``decided`` (``winner`` is a
    variant label; ``decision`` holds the figures, the p-value and the interval; with no
    significant difference ``winner`` is the default variant and ``decision.no_winner``
    is true), and the rest of the segment is fanned out with the winner.
    """

    __tablename__ = "ab_tests"

    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id", ondelete="CASCADE"),
                                             primary_key=True)
    #: Share of the segment in the test, percent (1-50); split evenly across the variants.
    test_share_percent: Mapped[float] = mapped_column(Float)
    #: "opens" (unique human opens per sent), "clicks" (unique clicks per sent) or "revenue".
    winner_metric: Mapped[str] = mapped_column(String(10))
    #: Seconds between the test share being out and the decision.
    wait_s: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(20), default="testing")
    test_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    winner: Mapped[str | None] = mapped_column(String(10))
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        # The decision job and the sweeper look for waiting tests that are due.
        Index("ix_ab_tests_state_ends", "state", "test_ends_at"),
    )

    def __repr__(self) -> str:
        return f"<AbTest campaign={self.campaign_id} state={self.state!r} winner={self.winner!r}>"


class Suppression(Base):
    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[SuppressionReason] = mapped_column(_enum(SuppressionReason))
    #: "all" (every mail), "marketing" (all marketing purposes) or one purpose.
    scope: Mapped[str] = mapped_column(String(100), default="all")
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    __table_args__ = (UniqueConstraint("email_hash", "reason", "scope", name="uq_suppressions_hash_reason_scope"),
                      Index("ix_suppressions_email_hash", "email_hash"))

    def __repr__(self) -> str:
        return f"<Suppression id={self.id} reason={self.reason.value if self.reason else None} scope={self.scope!r}>"


class Bounce(Base):
    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("deliveries.id"))
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    #: hard, soft or complaint.
    kind: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(100))
    raw: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    # Dashboard: bounces and complaints since T, by kind.
    __table_args__ = (Index("ix_bounces_occurred_kind", "occurred_at", "kind"),)

    def __repr__(self) -> str:
        return f"<Bounce id={self.id} kind={self.kind!r} status={self.status_code!r}>"


class TrackingEvent(Base):
    __tablename__ = "tracking_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("deliveries.id"))
    campaign_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("campaigns.id"))
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    kind: Mapped[TrackingKind] = mapped_column(_enum(TrackingKind))
    url: Mapped[str | None] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    __table_args__ = (
        Index("ix_tracking_campaign_kind", "campaign_id", "kind", "occurred_at"),
        # Campaign reports: unique opens/clicks (distinct deliveries) and the chart's buckets read
        # this index alone, so a 200,000-recipient report needs no table lookups.
        Index("ix_tracking_campaign_kind_delivery", "campaign_id", "kind", "delivery_id", "occurred_at"),
        # Engagement segment conditions: did customer C open/click since T.
        Index("ix_tracking_customer_kind", "customer_id", "kind", "occurred_at"),
        Index("ix_tracking_occurred_at", "occurred_at"),
    )

    def __repr__(self) -> str:
        return f"<TrackingEvent id={self.id} kind={self.kind.value if self.kind else None} delivery={self.delivery_id}>"


class CampaignTrackingTotal(Base):
    """Per campaign and tracking kind: events, and uniques (deliveries; for unsubscribes,
    customers) with at least one.  Kept by triggers on tracking_events (migration 0021)."""

    __tablename__ = "campaign_tracking_totals"

    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[TrackingKind] = mapped_column(_enum(TrackingKind), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    uniques: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"<CampaignTrackingTotal campaign={self.campaign_id} kind={self.kind} events={self.events}>"


class CampaignTrackingBucket(Base):
    """Events per campaign, kind and UTC minute or hour (``unit``), for the report's chart.
    Kept by triggers on tracking_events (migration 0021); a bucket emptied by a purge stays at 0."""

    __tablename__ = "campaign_tracking_buckets"

    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[TrackingKind] = mapped_column(_enum(TrackingKind), primary_key=True)
    #: "minute" or "hour".
    unit: Mapped[str] = mapped_column(String(10), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"<CampaignTrackingBucket campaign={self.campaign_id} {self.unit} {self.bucket_start} events={self.events}>"


class CampaignLinkCount(Base):
    """Clicks and unique clicks (deliveries) per campaign and link.  ``url_key`` is the URL's
    first 600 characters (NULL counts as ""); ``url`` the full URL.  Kept by triggers (0021)."""

    __tablename__ = "campaign_link_counts"

    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    url_key: Mapped[str] = mapped_column(Text, primary_key=True)
    url: Mapped[str | None] = mapped_column(Text)
    clicks: Mapped[int] = mapped_column(BigInteger)
    unique_clicks: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"<CampaignLinkCount campaign={self.campaign_id} clicks={self.clicks} url={(self.url or '')[:40]!r}>"


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: First characters of the key, shown in listings.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Comma-separated scopes (see mailer.web.apikeys.SCOPES); keys from before 0004 keep notices,events.
    scopes: Mapped[str] = mapped_column(String(200), default="notices,events", server_default="notices,events")
    #: When the key last authenticated a request (updated at most once a minute).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<ApiKey id={self.id} name={self.name!r} prefix={self.prefix!r}>"


class Wording(Base):
    """One version of a consent wording in one locale: the exact text and its SHA-256 (see mailer/consent/wordings.py)."""

    __tablename__ = "wordings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The file's name, ``wordings/<wording_id>.toml``.
    wording_id: Mapped[str] = mapped_column(String(100))
    locale: Mapped[str] = mapped_column(String(20))
    version: Mapped[str] = mapped_column(String(50))
    #: SHA-256 hex of the exact UTF-8 text; equals consent_events.wording_sha256 of grants made with it.
    sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    __table_args__ = (UniqueConstraint("wording_id", "locale", "version", name="uq_wordings_id_locale_version"),)

    def __repr__(self) -> str:
        return f"<Wording {self.wording_id}/{self.locale} v{self.version} {self.sha256[:12]}>"


class IdempotencyRecord(Base):
    """The response an HTTP API call gave for an ``Idempotency-Key`` (see mailer/idempotency.py)."""

    __tablename__ = "idempotency_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Who the key belongs to and for which endpoint, e.g. ``notices:key3``.
    scope: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(255))
    #: SHA-256 of the canonical request body: the same key with another body is refused.
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_records_scope_key"),)

    def __repr__(self) -> str:
        return f"<IdempotencyRecord scope={self.scope!r} key={self.key!r} status={self.status_code}>"


class ShopEvent(Base):
    __tablename__ = "shop_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(50))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_shop_events_type_received", "type", "received_at"),
                      # GDPR access/erasure: a customer's shop events.
                      Index("ix_shop_events_customer", "customer_id"))

    def __repr__(self) -> str:
        return f"<ShopEvent id={self.id} type={self.type!r}>"


class RewardCode(Base):
    __tablename__ = "reward_codes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pool: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(100))
    value: Mapped[str | None] = mapped_column(String(50))
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("deliveries.id"))
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("pool", "code", name="uq_reward_codes_pool_code"),
                      # Claiming picks the first free code of a pool.
                      Index("ix_reward_codes_pool_free", "pool", "assigned_at", "id"))

    def __repr__(self) -> str:
        return f"<RewardCode id={self.id} pool={self.pool!r} assigned={self.assigned_at is not None}>"


class CsatRating(Base):
    __tablename__ = "csat_ratings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_number: Mapped[str] = mapped_column(String(100), unique=True)
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("deliveries.id"))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<CsatRating order={self.order_number!r} rating={self.rating}>"


class InstanceSecret(Base):
    """A secret generated once with the database and kept with it (never rotated by config)."""

    __tablename__ = "instance_secrets"

    #: What the secret is for, e.g. ``address_hash_salt``.
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    def __repr__(self) -> str:  # never the value
        return f"<InstanceSecret name={self.name!r}>"


class BounceReport(Base):
    """The raw copy of a bounce or complaint (mail or webhook), kept for ``MAILER_BOUNCE_RETENTION_DAYS``.

    Deleted by ``mailer gdpr purge`` once old and by erasure at once (found by ``email_hash``).
    """

    __tablename__ = "bounce_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("deliveries.id"))
    email_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    #: bounce | complaint (the report's type) and the action taken.
    kind: Mapped[str] = mapped_column(String(20))
    #: Where it came from: "mail" or a webhook provider (ses, sendgrid, mailgun, postmark).
    source: Mapped[str] = mapped_column(String(20))
    raw: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now(),
                                                  index=True)

    def __repr__(self) -> str:  # never the raw text
        return f"<BounceReport id={self.id} kind={self.kind!r} source={self.source!r}>"


class WebhookEvent(Base):
    """One ESP webhook event taken into account (dedupe: each provider event id takes effect once)."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    event_id: Mapped[str] = mapped_column(String(200))
    #: What it was (bounce, complaint, subscription, ignored, unmatched) and a compact note without addresses.
    kind: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())

    __table_args__ = (UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event"),)

    def __repr__(self) -> str:
        return f"<WebhookEvent {self.provider}:{self.event_id} kind={self.kind!r}>"


class Order(Base):
    """One order of the shop: from an ``order_placed`` event or ``mailer orders import``."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"))
    #: The shop's own order id (``order_number`` of the events, ``order_id`` of the import).
    shop_order_id: Mapped[str] = mapped_column(String(200))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: In the order's currency; NULL when the event carried no total.
    total: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    #: Converted with MAILER_FX_RATES_FILE; NULL when it could not be (no total, no rate).
    total_shop: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    status: Mapped[OrderStatus] = mapped_column(_enum(OrderStatus), default=OrderStatus.placed)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        # One row per shop order of a customer: events and imports upsert on it.
        UniqueConstraint("customer_id", "shop_order_id", name="uq_orders_customer_shop_order"),
        # The fit reads orders up to an as-of day.
        Index("ix_orders_placed_at", "placed_at"),
    )

    def __repr__(self) -> str:
        return f"<Order id={self.id} customer_id={self.customer_id} shop_order_id={self.shop_order_id!r}>"


class PredictionFit(Base):
    """One fit of the prediction models (or an attempt refused for too little history)."""

    __tablename__ = "prediction_fits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    as_of: Mapped[date] = mapped_column(Date)
    #: ``cli`` (mailer predict fit/score) or ``daily`` (the worker's housekeeping).
    trigger: Mapped[str] = mapped_column(String(20))
    #: The day a daily refit is for: unique, so two workers never refit the same day.
    daily_key: Mapped[date | None] = mapped_column(Date, unique=True)
    #: ``fitted``, ``running``, ``not_enough_history`` or ``failed``.
    status: Mapped[str] = mapped_column(String(30))
    customers: Mapped[int | None] = mapped_column(Integer)
    scored: Mapped[int | None] = mapped_column(Integer)
    log_likelihood: Mapped[float | None] = mapped_column(Float)
    #: The ``mailer predict fit --json`` object (parameters of both models).
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_prediction_fits_fitted_at", "fitted_at"),)

    def __repr__(self) -> str:
        return f"<PredictionFit id={self.id} as_of={self.as_of} status={self.status!r}>"


class ConsoleRole(str, enum.Enum):
    admin = "admin"
    marketer = "marketer"
    compliance = "compliance"
    viewer = "viewer"


class ConsoleUser(Base):
    """A person who logs in to the console (``mailer users create EMAIL --role ROLE``)."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Normalized (lower-case) address; the login name.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[ConsoleRole] = mapped_column(_enum(ConsoleRole))
    #: Argon2id hash (argon2-cffi); NULL until the set-password link is used.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    #: Locale of the console's UI for this person (en, zh-TW, zh-CN, pl, ko).
    locale: Mapped[str] = mapped_column(String(20), default="en", server_default="en")
    #: Base32 TOTP secret once confirmed (pyotp); NULL = no second factor.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    #: A secret being set up, not yet confirmed with a code.
    totp_pending: Mapped[str | None] = mapped_column(String(64))
    #: The last TOTP time step accepted (a code works once).
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())
    password_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:  # never the hashes or the secret
        return f"<ConsoleUser id={self.id} email={self.email!r} role={self.role.value if self.role else None}>"


class ConsoleSession(Base):
    """One logged-in browser. The cookie carries a random id; only its SHA-256 is stored."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("console_users.id", ondelete="CASCADE"))
    #: The session's CSRF token (form field csrf_token / header X-CSRF-Token).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))

    # "Log out everywhere" revokes a user's live sessions.
    __table_args__ = (Index("ix_console_sessions_user", "user_id", "revoked_at"),)

    def __repr__(self) -> str:  # never the token
        return f"<ConsoleSession id={self.id} user_id={self.user_id} revoked={self.revoked_at is not None}>"


class ConsoleToken(Base):
    """A one-time link (set a password): only the SHA-256 of the token is stored."""

    __tablename__ = "console_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("console_users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<ConsoleToken id={self.id} user_id={self.user_id} purpose={self.purpose!r}>"


class AuditEntry(Base):
    """One audited action: who, when, what, on what, from which IP; hash-chained like consent_events."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Position in the chain, 1-based, gapless.
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Who: a console user's e-mail, or ``cli:<user>`` / ``system``.
    actor: Mapped[str] = mapped_column(String(320))
    #: What: one of mailer.audit.ACTIONS (campaign.send, gdpr.erase, ...).
    action: Mapped[str] = mapped_column(String(50))
    #: On what: ``campaign:12``, ``user:alice@example.com``, ``apikey:shop``.
    target: Mapped[str] = mapped_column(String(400))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (
        # The audit page filters by time (newest first) and by action.
        Index("ix_audit_log_occurred_at", "occurred_at"),
        Index("ix_audit_log_action_occurred", "action", "occurred_at"),
    )

    def __repr__(self) -> str:
        return f"<AuditEntry seq={self.seq} action={self.action!r} actor={self.actor!r}>"
# -- shop connectors (mailer.connectors, migration 0008) ------------------------------------------
class ConnectorShop(Base):
    """A connected shop: its webhook secret and write-back credentials (``mailer connect``)."""

    __tablename__ = "connector_shops"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: ``shopify`` or ``woocommerce``.
    platform: Mapped[str] = mapped_column(String(20))
    #: ``my-shop.myshopify.com``, or the WooCommerce store URL as ``X-WC-Webhook-Source`` sends it.
    shop: Mapped[str] = mapped_column(String(255))
    #: Webhook signing secret (MAILER_SHOPIFY_SECRETS / MAILER_WOOCOMMERCE_SECRETS win over it).
    secret: Mapped[str | None] = mapped_column(Text)
    #: Where consent is written back: the Admin GraphQL URL, or the store's base URL.
    api_url: Mapped[str | None] = mapped_column(String(2000))
    #: Shopify Admin API access token, or WooCommerce ``consumer_key:consumer_secret``.
    api_token: Mapped[str | None] = mapped_column(Text)
    #: The last ``consent_events.seq`` the write-back has looked at for this shop.
    writeback_cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("platform", "shop", name="uq_connector_shops_platform_shop"),)

    def __repr__(self) -> str:
        return f"<ConnectorShop {self.platform}:{self.shop}>"


class ConnectorWebhook(Base):
    """One webhook delivery from a shop, kept under its webhook id (each takes effect once)."""

    __tablename__ = "connector_webhooks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(String(20))
    shop: Mapped[str] = mapped_column(String(255))
    #: ``X-Shopify-Webhook-Id`` / ``X-WC-Webhook-Delivery-ID``.
    webhook_id: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(String(100))
    #: ``pending``, ``processing``, ``done``, ``failed`` or ``ignored`` (an unmapped topic).
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The same webhook id received again (answered 200, not applied again).
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    #: The raw body while it is being processed; dropped once done (personal data).
    body: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        # The dedupe: a second INSERT of the same delivery fails, also when two arrive at once.
        UniqueConstraint("platform", "shop", "webhook_id", name="uq_connector_webhooks_delivery"),
        # The sweeper finds deliveries whose message was lost; status reads per topic.
        Index("ix_connector_webhooks_status", "status", "received_at"),
        Index("ix_connector_webhooks_shop_topic", "platform", "shop", "topic", "received_at"),
    )

    def __repr__(self) -> str:
        return f"<ConnectorWebhook {self.platform}:{self.shop} {self.topic} {self.webhook_id} {self.status}>"


class ShopCustomer(Base):
    """Which shop a customer came from, and the shop's own id for them (write-back, shop/redact)."""

    __tablename__ = "shop_customers"

    platform: Mapped[str] = mapped_column(String(20), primary_key=True)
    shop: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"),
                                             primary_key=True)
    remote_id: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_shop_customers_customer", "customer_id"),)

    def __repr__(self) -> str:
        return f"<ShopCustomer {self.platform}:{self.shop} customer={self.customer_id} remote={self.remote_id}>"


class ConnectorItem(Base):
    """What a shop last said about one stock item (restocks are stock rising from zero)."""

    __tablename__ = "connector_items"

    platform: Mapped[str] = mapped_column(String(20), primary_key=True)
    shop: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: ``inv:<inventory_item_id>`` (Shopify) or ``product:<id>`` (WooCommerce).
    item_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    sku: Mapped[str | None] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    price: Mapped[str | None] = mapped_column(String(40))
    url: Mapped[str | None] = mapped_column(String(2000))
    image_url: Mapped[str | None] = mapped_column(String(2000))
    #: Units available over every location; NULL: never told.
    available: Mapped[int | None] = mapped_column(Integer)
    #: Per location (Shopify ``inventory_levels/update``): ``{location_id: available}``.
    levels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<ConnectorItem {self.platform}:{self.shop} {self.item_key} sku={self.sku} available={self.available}>"


class ConnectorOrder(Base):
    """A shop order as the connector knows it: its number, customer and the ETA last told."""

    __tablename__ = "connector_orders"

    platform: Mapped[str] = mapped_column(String(20), primary_key=True)
    shop: Mapped[str] = mapped_column(String(255), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    order_number: Mapped[str] = mapped_column(String(100))
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"))
    #: The estimated delivery the customer was last told (ISO 8601, as the shop wrote it).
    last_eta: Mapped[str | None] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<ConnectorOrder {self.platform}:{self.shop} {self.order_id} #{self.order_number}>"


class ConnectorOutbox(Base):
    """One consent change to write back to a shop: queued, retried with backoff, sent once."""

    __tablename__ = "connector_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    consent_event_id: Mapped[int] = mapped_column(BigId)
    platform: Mapped[str] = mapped_column(String(20))
    shop: Mapped[str] = mapped_column(String(255))
    #: The shop's id for the customer; None until the write-back looked them up by e-mail.
    remote_id: Mapped[str | None] = mapped_column(String(100))
    #: What the shop is told: ``unsubscribed``.
    state: Mapped[str] = mapped_column(String(20))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: ``pending``, ``sending``, ``sent``, ``unknown`` (the shop has no customer with that address) or
    #: ``failed`` (gave up after MAILER_CONNECTOR_WRITEBACK_MAX_ATTEMPTS, or nothing to look up).
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        # Idempotent: one write-back per consent event and shop.
        UniqueConstraint("consent_event_id", "platform", "shop", name="uq_connector_outbox_event_shop"),
        # The sweeper takes due rows.
        Index("ix_connector_outbox_due", "status", "next_attempt_at"),
    )

    def __repr__(self) -> str:
        return f"<ConnectorOutbox {self.id} {self.platform}:{self.shop} event={self.consent_event_id} {self.status}>"
class Attribution(Base):
    """One attributed order: the campaign or automation send that gets its revenue.

    One order, one send (``order_id`` is unique).  Per-variant or per-anything figures
    are a join on ``delivery_id``.
    """

    __tablename__ = "attributions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(BigId, ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"))
    delivery_id: Mapped[int] = mapped_column(BigId, ForeignKey("deliveries.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("campaigns.id", ondelete="CASCADE"))
    #: The automation rule of the send (``deliveries.automation``); NULL for a campaign send.
    automation: Mapped[str | None] = mapped_column(String(100))
    #: The order's currency (ISO 4217) and total in it; NULL amount when the order carried no total.
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    #: ``click`` (last tracked click within MAILER_ATTRIBUTION_CLICK_DAYS) or ``open``
    #: (last human open within MAILER_ATTRIBUTION_OPEN_HOURS).
    basis: Mapped[str] = mapped_column(String(10))
    #: When the click or open happened, and when the order was placed.
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime())
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attributed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Set when the order was cancelled or refunded; the figures leave it out then.
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: ``cancelled`` or ``refunded``.
    reversal: Mapped[str | None] = mapped_column(String(20))

    __table_args__ = (
        # Campaign figures: one campaign's attributions, the reversed ones left out.
        Index("ix_attributions_campaign", "campaign_id", "reversed_at"),
        # Automation figures, per rule.
        Index("ix_attributions_automation", "automation", "reversed_at"),
        # Per-delivery joins (A/B variants, deletion of a delivery).
        Index("ix_attributions_delivery", "delivery_id"),
    )

    def __repr__(self) -> str:
        return (f"<Attribution id={self.id} order_id={self.order_id} delivery_id={self.delivery_id} "
                f"basis={self.basis!r}>")


class CampaignAction(Base):
    """A pause or resume of a campaign: by a person (``cli``, ``console``) or by a brake, with its figures."""

    __tablename__ = "campaign_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id", ondelete="CASCADE"))
    #: ``paused`` or ``resumed``.
    action: Mapped[str] = mapped_column(String(20))
    #: Who: ``brake:complaint_rate``, ``brake:hard_bounce_rate``, ``cli``, ``console``, ``api``.
    actor: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_campaign_actions_campaign", "campaign_id", "occurred_at"),)

    def __repr__(self) -> str:
        return f"<CampaignAction id={self.id} campaign_id={self.campaign_id} action={self.action!r}>"
class PredictionTrigger(Base):
    """What a customer's prediction trigger last saw (mailer.automations.predicted).

    ``churn_risk_became``: ``value`` is the churn risk of the last processed score and
    ``changes`` counts the crossings raised.  ``expected_order_due``: ``value`` is the
    purchase cycle (the ISO day of the last order), ``due_at`` the expected next order
    frozen at the cycle's first score, ``fired_at`` when its event was raised.
    """

    __tablename__ = "prediction_triggers"

    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"),
                                             primary_key=True)
    trigger: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(40))
    changes: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"<PredictionTrigger customer={self.customer_id} {self.trigger}={self.value!r}>"


class WorkerHeartbeat(Base):
    """A running worker process and when it last said so, on the database's clock
    (mailer.delivery.heartbeats): the sweeper trusts it to tell a dead host from a slow one.

    ``worker_id`` is the process's Dramatiq broker id (what its unacknowledged messages are
    filed under in Redis); ``name`` is ``MAILER_WORKER_NAME``; ``reaped_at`` is when a
    sweeper put the silent worker's messages back in work (cleared by its next beat).
    """

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reaped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The sweeper's "who went silent" is a range on beat_at.
    __table_args__ = (Index("ix_worker_heartbeats_beat_at", "beat_at"),)

    def __repr__(self) -> str:
        return f"<WorkerHeartbeat {self.name} ({self.worker_id}) beat_at={self.beat_at}>"
