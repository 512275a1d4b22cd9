"""Settings: one frozen object built from ``MAILER_*`` environment variables.

Nothing in mailer reads the environment except :func:`Settings.from_env`; every
service receives the ``Settings`` it needs as an argument.  The README lists
every variable; keep that table and this module in step.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The project root when running from a checkout (templates/, segments/ live here).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}


def _bool(value: str) -> bool:
    return value.strip().lower() in _TRUE


def _path(value: str) -> Path:
    return Path(value).expanduser()


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every tunable of mailer, immutable once built."""

    #: SQLAlchemy URL; SQLite file by default, ``postgresql+psycopg://`` in production.
    database_url: str = "sqlite:///mailer.db"
    #: Dramatiq broker: ``redis://host:port/db`` or ``stub://`` (in-process, embedded default/demo).
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Mail transport: ``smtp://user:pass@host:587?starttls=1``, ``smtps://...``,
    #: ``outbox://path`` (one .eml per mail + index.html) or ``memory://``.
    smtp_url: str = "outbox://outbox"
    #: Further relays (comma separated ``url#weight``) used with weights and failover.
    smtp_relays: str = ""
    #: Absolute base URL of the mails' images (product pictures): ``https://cdn.example.com/mail``;
    #: empty = the packaged sample images (the outbox copies them next to its mails).
    asset_base_url: str = ""
    #: ``From`` of every mail.
    from_address: str = "Northwind Shop <shop@example.com>"
    #: Envelope sender domain for VERP return paths (``bounces+<delivery id>.<HMAC>@domain``).
    bounce_domain: str = "example.com"
    #: Public base URL of ``mailer serve`` (tracking, unsubscribe, preferences).
    base_url: str = "http://127.0.0.1:8000"
    #: HMAC key for link tokens and Message-IDs; set a long random value in production.
    secret_key: str = "change-me-in-production"
    #: Keys for rotation, comma separated, newest first: new links are signed with the first,
    #: links signed with any listed key still verify. When set, replaces MAILER_SECRET_KEY.
    secret_keys: tuple[str, ...] = ()
    #: Optional. The address-hash salt (tombstones, consent chain) lives in the database
    #: (table instance_secrets); if set, this seeds it for a new database and must equal it after.
    hash_salt: str = ""
    #: Folder of notice kinds and newsletters (templates/<kind>/kind.toml, <locale>.mjml).
    templates_dir: Path = PROJECT_ROOT / "templates"
    #: Folder of segment definitions (segments/<name>.toml or .yaml).
    segments_dir: Path = PROJECT_ROOT / "segments"
    #: Folder of automation rules (automations/<rule>.toml).
    automations_dir: Path = PROJECT_ROOT / "automations"
    #: Folder of consent wordings (wordings/<id>.toml: per locale, a version and its exact text).
    wordings_dir: Path = PROJECT_ROOT / "wordings"
    #: Folder of sign-up and restock forms (forms/<id>.toml), served at /f/<id>.
    forms_dir: Path = PROJECT_ROOT / "forms"
    #: Sign-ups (POST /f/<id>) allowed per client IP per minute, across processes (0 = no limit).
    signup_ip_per_minute: int = 20
    #: Sign-ups allowed per address per hour, across processes (0 = no limit); more answer as usual but do nothing.
    signup_address_per_hour: int = 5
    #: POST /v1/restock-requests mails a confirmation link instead of recording at once (1) unless the body says.
    restock_double_opt_in: bool = False
    #: The shop's name, shown in every mail.
    store_name: str = "Northwind Shop"
    #: The shop's postal address, in every mail's footer (required for marketing mail).
    store_address: str = "Northwind Shop, 12 Harbour Road, 80-001 Gdańsk, Poland"
    #: Locale for customers without one (and the last step of every fallback chain).
    default_locale: str = "en"
    #: Time zone for customers without one (local-time sending, quiet hours).
    default_timezone: str = "Europe/Warsaw"
    #: Currency for customers without one (ISO 4217).
    default_currency: str = "EUR"
    #: Marketing consent on the "soft opt-in" basis counts as consent when true.
    soft_opt_in: bool = True
    #: Frequency cap: at most N marketing mails per customer within the window (hours). 0 = off.
    frequency_cap: int = 3
    #: The frequency cap's rolling window, hours.
    frequency_window_hours: int = 24 * 7
    #: Quiet hours for marketing automations, local time "HH:MM-HH:MM".
    quiet_hours: str = "21:00-08:00"
    #: Give up retrying a delivery after this many seconds.
    retry_max_age_s: int = 6 * 3600
    #: Shortest wait before a retry, milliseconds (Dramatiq Retries adds exponential growth and jitter).
    retry_min_backoff_ms: int = 5_000
    #: Longest wait between two retries, milliseconds.
    retry_max_backoff_ms: int = 15 * 60_000
    #: Soft bounces before the address is suppressed.
    soft_bounce_limit: int = 3
    #: Lease a worker holds on a delivery while it sends, seconds.
    lease_s: int = 120
    #: Every this many seconds each worker process re-enqueues lost and due deliveries.
    sweep_interval_s: int = 15
    #: A queued delivery untouched this long (seconds) is presumed lost by the broker.
    sweep_stale_s: int = 300
    #: Every this many seconds each worker process writes its heartbeat row (on the database's clock); a worker silent for MAILER_LEASE_S is dead, and the Dramatiq messages it had taken go back to their queues at the next sweep. 0 = no heartbeat.
    heartbeat_s: int = 5
    #: Recipients per Dramatiq message on the bulk queue.
    batch_size: int = 200
    #: Messages per second per relay, across all workers. 0 = unlimited.
    relay_rate: int = 0
    #: SMTP connections per relay per worker process for campaign mail, each with its own sending thread; 0 = each worker thread sends over its own connection (docs/delivery.md, sizing).
    smtp_connections: int = 0
    #: glibc malloc arenas a worker process's threads share (``mallopt(M_ARENA_MAX)`` at start); fewer arenas keep less memory with many sending threads; 0 = glibc's default (8 per core); ``MALLOC_ARENA_MAX`` in the environment wins (docs/delivery.md, sizing).
    malloc_arenas: int = 2
    #: Worker threads per worker process that take only notices (the transactional queue), besides --threads (which take notices too); 0 = none (docs/delivery.md, sizing).
    notice_threads: int = 2
    #: Compile every notice template (kind x locale) in a background thread when a worker that takes notices boots (about 3 s of CPU per process), so no notice pays a compile during a campaign; 0 = compile on first use (docs/delivery.md).
    warm_templates: bool = True
    #: Messages per second per recipient domain, across all workers. 0 = unlimited.
    domain_rate: int = 0
    #: DKIM signing domain (d=); empty = no signing. Keys and selectors below.
    dkim_domain: str = ""
    #: DKIM selector of the RSA key (DNS name <selector>._domainkey.<domain>).
    dkim_selector: str = "mailer"
    #: Path of the RSA private key (PEM) for rsa-sha256 signatures.
    dkim_rsa_key: str = ""
    #: Path of the Ed25519 private key (PEM) for ed25519-sha256 signatures.
    dkim_ed25519_key: str = ""
    #: DKIM selector of the Ed25519 key.
    dkim_ed25519_selector: str = "mailer-ed"
    #: Raw copies of bounces and complaints older than this many days are deleted by ``mailer gdpr purge``.
    bounce_retention_days: int = 90
    #: Maildir where ``mailer bounces ingest`` keeps unmatched reports apart; empty: ``.Unmatched`` inside the ingested Maildir.
    bounce_unmatched_dir: str = ""
    #: Amazon SNS signing certificate for ``POST /webhooks/ses``: a PEM file path or the PEM text; empty: only the cache dir.
    ses_signing_cert: str = ""
    #: Directory of SNS signing certificates named like the file of their ``SigningCertURL`` (never fetched).
    ses_cert_cache_dir: str = ""
    #: SendGrid Event Webhook verification key (base64 DER or PEM, ECDSA P-256); empty: the endpoint answers 401.
    sendgrid_public_key: str = ""
    #: Mailgun webhook signing key (HMAC-SHA256); empty: the endpoint answers 401.
    mailgun_signing_key: str = ""
    #: Postmark webhook basic auth as ``user:password``; empty: the endpoint answers 401.
    postmark_webhook_auth: str = ""
    #: Webhook signatures whose timestamp is further than this many seconds from now are refused (replays).
    webhook_max_age_s: int = 900
    #: ESP webhooks' open and click events are recorded in the tracking tables (off: they are acknowledged and ignored).
    webhook_tracking: bool = False
    #: Shopify webhook secrets as comma-separated ``shop-domain=secret`` pairs (``POST /webhooks/shopify``); they win over ``mailer connect``.
    shopify_secrets: str = ""
    #: WooCommerce webhook secrets as comma-separated ``store-url=secret`` pairs (``POST /webhooks/woocommerce``).
    woocommerce_secrets: str = ""
    #: The consent purpose a shop's e-mail marketing consent is (both ways: webhooks in, write-back out).
    connector_purpose: str = "newsletter"
    #: Folder where a Shopify ``customers/data_request`` export is written (one JSON file per request, per shop).
    connector_export_dir: str = "gdpr-exports"
    #: What a WooCommerce order reaching ``completed`` means: ``delivered`` (order_delivered) or ``shipped``.
    woocommerce_completed: str = "delivered"
    #: Consent write-back to a shop: attempts before a change is marked failed (backoff doubles from 30 s).
    connector_writeback_max_attempts: int = 8
    #: Consent write-back: the first retry waits this many seconds, each further one twice as long (at most 1 h).
    connector_writeback_backoff_s: int = 30
    #: Tracking events older than this many days are purged by ``mailer gdpr purge``.
    tracking_retention_days: int = 395
    #: Opens within this many seconds of delivery are machine opens.
    machine_open_window_s: int = 10
    #: Track opens and clicks only for customers with current consent for the "tracking" purpose.
    tracking_requires_consent: bool = False
    #: Double opt-in links expire after this many hours.
    confirm_link_ttl_hours: int = 72
    #: Unsubscribe / preference tokens expire after this many days.
    token_ttl_days: int = 365
    #: ``mailer serve`` bind address.
    http_host: str = "127.0.0.1"
    #: `mailer serve` port.
    http_port: int = 8000
    #: Largest HTTP request body accepted, bytes (larger ones get 413, chunked bodies included).
    max_body_bytes: int = 262_144
    #: Proxies (comma-separated IPs or CIDRs) whose ``X-Forwarded-For`` is believed; empty: the socket peer is the client.
    trusted_proxies: str = ""
    #: Threads per worker process when run by ``mailer worker``.
    worker_threads: int = 8
    #: Consent purposes this deployment knows besides ``restock:<sku>``.
    purposes: tuple[str, ...] = ("newsletter", "product_updates", "tracking", "loyalty")
    #: Prometheus exposition port for worker metrics (0 = off).
    metrics_port: int = 0
    #: Address the worker's metrics server binds to (0.0.0.0 to let a remote Prometheus scrape).
    metrics_host: str = "127.0.0.1"
    #: Redis broker: a worker silent this long (milliseconds) is dead and its messages are requeued.
    broker_heartbeat_ms: int = 60_000
    #: Redis broker: queue maintenance (requeueing dead workers' messages) per million commands.
    broker_maintenance_chance: int = 1000
    #: PostgreSQL: TCP keepalive idle time (seconds) on every connection, so a peer cut off by a
    #: partition is noticed in about this long plus 3 probes a third of it apart. 0 = the OS default.
    db_keepalive_s: int = 30
    #: PostgreSQL: the server ends a session idle inside a transaction this long (seconds), releasing
    #: its locks (a partitioned worker's consent read locks). Above the SMTP timeout of one reply. 0 = off.
    db_idle_in_transaction_s: int = 90
    #: PostgreSQL: consent writes wait at most this long (seconds) for the chain lock or a consent row,
    #: then fail with a retryable "busy" error. Above db_idle_in_transaction_s. 0 = wait for ever.
    db_lock_timeout_s: int = 120
    #: PostgreSQL: statement_timeout (seconds) of worker processes' sessions. 0 = none.
    db_worker_statement_timeout_s: int = 60
    #: SQLite: page cache per connection of a worker process, KiB (SQLite's default is 2000); a worker's pool holds up to 15 connections, each rereads what another one wrote anyway. 0 = SQLite's default.
    db_worker_sqlite_cache_kib: int = 512
    #: This process's name in lease owners, logs and metrics; empty = hostname:pid.
    worker_name: str = ""
    #: The shop's rate table for converting order totals to MAILER_DEFAULT_CURRENCY (the shop's currency):
    #: a CSV ``currency,rate`` or a TOML ``[rates]`` table, rate = shop currency per unit; never a live lookup.
    fx_rates_file: str = ""
    #: Monthly discount rate of ``predicted_clv`` over its 12 months (0.01 = 1% a month).
    clv_discount_rate: float = 0.01
    #: Quantiles of ``predicted_clv`` where the computed spend tier becomes medium and high ("q1,q2").
    spend_tier_quantiles: str = "0.5,0.8"
    #: The worker refits the prediction models and rescores every customer once a day (0 = off).
    predictions_daily_refit: bool = True
    #: Console sessions unused for this many minutes end (the person logs in again).
    console_idle_minutes: int = 30
    #: Console sessions end this many hours after login, used or not.
    console_session_max_hours: int = 12
    #: Require a TOTP second factor for admin and compliance console users (1); others may opt in.
    console_require_2fa: bool = False
    #: Console login attempts allowed per client IP per minute, across processes (0 = no limit).
    console_login_ip_per_minute: int = 10
    #: Console login attempts allowed per account per 15 minutes, across processes (0 = no limit).
    console_login_account_per_15min: int = 10
    #: One-time set-password links of `mailer users create` expire after this many hours.
    console_invite_ttl_hours: int = 72
    #: An order goes to the send whose tracked link the customer clicked last within this many days.
    attribution_click_days: int = 5
    #: Failing a click, to the send the customer last opened (human opens only) within this many hours.
    attribution_open_hours: int = 24
    #: The shop's own domains (comma separated; subdomains included): their links in campaign mail get
    #: ``utm_source``, ``utm_medium=email`` and ``utm_campaign`` unless they already carry them.
    shop_domains: tuple[str, ...] = ()
    #: Brake: a running campaign pauses itself when complaints / sent reach this share (0.003 = 0.3%; 0 = off).
    max_complaint_rate: float = 0.003
    #: Brake: a running campaign pauses itself when hard bounces / attempted pass this share (0.05 = 5%; 0 = off).
    max_hard_bounce_rate: float = 0.05
    #: The brakes act only once a campaign has sent at least this many mails.
    brake_min_sent: int = 1000
    #: ``From`` of marketing mail (campaigns, marketing automations), e.g. on a news. subdomain; empty: MAILER_FROM_ADDRESS.
    marketing_from: str = ""
    #: ``From`` of transactional mail (notices), e.g. on an orders. subdomain; empty: MAILER_FROM_ADDRESS.
    transactional_from: str = ""

    @property
    def signing_keys(self) -> tuple[str, ...]:
        """Token keys, newest first: ``MAILER_SECRET_KEYS``, else ``MAILER_SECRET_KEY`` alone."""
        return self.secret_keys or (self.secret_key,)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ``MAILER_<FIELD>`` variables (upper case), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in dataclasses.fields(cls):
            raw = env.get("MAILER_" + f.name.upper())
            if raw is None:
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = _bool(raw)
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, Path):
                values[f.name] = _path(raw)
            elif isinstance(default, tuple):
                values[f.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)


#: Environment variable name for every field, for the README and ``mailer settings``.
ENV_VARS = {f.name: "MAILER_" + f.name.upper() for f in dataclasses.fields(Settings)}


def settings_markdown() -> str:
    """The README's settings table, built from the ``#:`` comments above each field."""

    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(Settings).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"(\w+): [^=]+=", text)
        if match:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, Path):
            default = f"<checkout>/{default.name}"
        elif isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = int(default)
        shown = f"`{default}`" if default != "" else "(empty)"
        meaning = docs.get(f.name, "").replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{ENV_VARS[f.name]}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
