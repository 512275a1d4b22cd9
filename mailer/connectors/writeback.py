"""Consent written back to the shop: a withdrawal made in mailer reaches the shop's records.

An unsubscribe link, the preference centre, a complaint, an erasure or an admin withdrawal
is a ``withdrawn`` consent event for MAILER_CONNECTOR_PURPOSE.  :func:`collect` (the sweep
hook) reads the ledger after each shop's cursor (``connector_shops.writeback_cursor``) and
queues one ``connector_outbox`` row per event and connected shop, with the shop's id for the
customer when ``shop_customers`` has it.  Without it (a guest order, a customer imported
into mailer, a link made before the shop said its id), :func:`send` first looks the customer
up by e-mail (Shopify Admin GraphQL ``customers(query: "email:...")``, WooCommerce
``GET /wp-json/wc/v3/customers?email=``), keeps the id it finds on the row and the link, and
writes back; a shop with no customer of that exact address ends the row as ``unknown``.  An
erased customer's address is gone, so an erasure reaches a shop only when its id was known.
Events whose proof names that shop (``form_id`` ``shopify:<shop>``: they came from its
webhooks) are never echoed back.

:func:`send` (actor ``write_back_consent``) claims a row (a conditional UPDATE, so two
workers never send one row), sends it, and marks it ``sent``; a refusal or a network error
schedules the next attempt after MAILER_CONNECTOR_WRITEBACK_BACKOFF_S, doubling each time
(at most :data:`MAX_BACKOFF_S`), until MAILER_CONNECTOR_WRITEBACK_MAX_ATTEMPTS (``failed``).
The one duplicate window: a worker that dies after the shop answered and before the
commit; setting ``UNSUBSCRIBED`` again changes nothing at the shop.

* Shopify: Admin GraphQL ``customerEmailMarketingConsentUpdate`` with
  ``input: {customerId, emailMarketingConsent: {marketingState: UNSUBSCRIBED, consentUpdatedAt}}``,
  header ``X-Shopify-Access-Token``.
* WooCommerce: ``PUT <store>/wp-json/wc/v3/customers/<id>`` (basic auth with the REST API
  key) setting the customer's meta ``mailer_email_marketing`` = ``unsubscribed`` and
  ``mailer_email_marketing_updated_at``.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, timedelta

from sqlalchemy import and_, func, select, update

from mailer import instance_secrets
from mailer.app import App
from mailer.clock import utcnow
from mailer.db import insert_or_ignore
from mailer.errors import ConfigurationError
from mailer.models import ConnectorOutbox, ConnectorShop, ConsentAction, ConsentEvent, Customer, ShopCustomer
from mailer.queue import port

log = logging.getLogger("mailer.connectors")

SHOPIFY_API_VERSION = "2025-01"
SHOPIFY_MUTATION = (
    "mutation customerEmailMarketingConsentUpdate($input: CustomerEmailMarketingConsentUpdateInput!) {"
    " customerEmailMarketingConsentUpdate(input: $input) {"
    " customer { id emailMarketingConsent { marketingState consentUpdatedAt } }"
    " userErrors { field message } } }")
SHOPIFY_LOOKUP = ("query customerByEmail($query: String!) {"
                  " customers(first: 5, query: $query) { edges { node { id email } } } }")
WOO_META_STATE = "mailer_email_marketing"
WOO_META_UPDATED = "mailer_email_marketing_updated_at"
#: Longest wait between two attempts, seconds.
MAX_BACKOFF_S = 3600
#: A claimed row is the claimant's for this long (seconds).
SEND_LEASE_S = 120
#: HTTP timeout of one write-back, seconds.
HTTP_TIMEOUT_S = 10
#: Ledger events looked at per shop and sweep.
COLLECT_BATCH = 5000
#: Longest error text kept.
MAX_ERROR_CHARS = 1000
#: Most bytes of a shop's answer read.
MAX_ANSWER_BYTES = 1_000_000
#: Longest shop id for a customer kept (connector_outbox.remote_id).
MAX_REMOTE_ID_CHARS = 100


def default_api_url(platform: str, shop: str) -> str:
    if platform == "shopify":
        return f"https://{shop}/admin/api/{SHOPIFY_API_VERSION}/graphql.json"
    return shop


def collect(app: App) -> int:
    """Queue the withdrawals made since each shop's cursor; how many rows were queued."""
    purpose = app.settings.connector_purpose
    queued = 0
    with app.session() as s:
        shops = s.execute(select(ConnectorShop.id, ConnectorShop.platform, ConnectorShop.shop,
                                 ConnectorShop.writeback_cursor)).all()
    for shop_id, platform, shop, cursor in shops:
        with app.session() as s:
            top = s.execute(select(func.max(ConsentEvent.seq))).scalar_one_or_none() or 0
            high = min(top, cursor + COLLECT_BATCH)
            if high <= cursor:
                continue
            # Withdrawals in the seq window (the seq index), each with the shop's id for the
            # customer when mailer has it (shop_customers' primary key; an outer join: a customer
            # the shop may know only by address is queued too, and looked up by e-mail when sent).
            rows = s.execute(select(ConsentEvent.id, ConsentEvent.occurred_at, ConsentEvent.form_id,
                                    ShopCustomer.remote_id)
                             .outerjoin(ShopCustomer, and_(ShopCustomer.customer_id == ConsentEvent.customer_id,
                                                           ShopCustomer.platform == platform,
                                                           ShopCustomer.shop == shop))
                             .where(ConsentEvent.seq > cursor, ConsentEvent.seq <= high,
                                    ConsentEvent.action == ConsentAction.withdrawn,
                                    ConsentEvent.purpose == purpose)
                             .order_by(ConsentEvent.seq)).all()
            for event_id, occurred_at, form_id, remote_id in rows:
                if form_id == f"{platform}:{shop}":
                    continue  # it came from this shop: never echoed back
                res = s.execute(insert_or_ignore(s, ConnectorOutbox, dict(
                    consent_event_id=event_id, platform=platform, shop=shop, remote_id=remote_id,
                    state="unsubscribed", occurred_at=occurred_at, status="pending", attempts=0,
                    next_attempt_at=utcnow(), created_at=utcnow()),
                    index_elements=["consent_event_id", "platform", "shop"]))
                queued += res.rowcount or 0
            # Only this sweep moves the cursor forward (a concurrent sweep's rows are ignored on the key).
            s.execute(update(ConnectorShop).where(ConnectorShop.id == shop_id, ConnectorShop.writeback_cursor < high)
                      .values(writeback_cursor=high))
    return queued


def enqueue_due(app: App) -> int:
    now = utcnow()
    with app.session() as s:
        # ix_connector_outbox_due: pending rows whose time came, and sending rows whose lease ran out.
        ids = s.execute(select(ConnectorOutbox.id)
                        .where(ConnectorOutbox.status.in_(("pending", "sending")),
                               ConnectorOutbox.next_attempt_at <= now)
                        .order_by(ConnectorOutbox.next_attempt_at).limit(500)).scalars().all()
    for row_id in ids:
        port.enqueue_stored(port.WRITE_BACK_CONSENT, row_id)
    return len(ids)


def sweep_hook(app: App) -> None:
    """Queue new withdrawals, then hand the due ones to the workers."""
    collect(app)
    enqueue_due(app)


def api_token(settings, shop: ConnectorShop) -> str | None:
    """The shop's API token in clear (it is stored sealed)."""
    if not shop.api_token:
        return None
    return instance_secrets.unseal(settings, shop.api_token, platform=shop.platform, shop=shop.shop,
                                   column="api_token")


def _credentials(settings, row: ConnectorOutbox, shop: ConnectorShop | None) -> tuple[str, str]:
    """The shop's API token in clear and its API base URL, or :class:`_Refused` (retried) when
    the shop has no usable credentials."""
    try:
        token = api_token(settings, shop) if shop is not None else None
    except ConfigurationError as exc:
        raise _Refused(str(exc)) from exc
    if not token:
        raise _Refused(f"no API credentials for {row.platform}:{row.shop} (mailer connect ... --api-token)")
    return token, shop.api_url or default_api_url(row.platform, row.shop)


def _request(settings, row: ConnectorOutbox, shop: ConnectorShop | None) -> urllib.request.Request:
    token, base = _credentials(settings, row, shop)
    when = row.occurred_at if row.occurred_at.tzinfo else row.occurred_at.replace(tzinfo=UTC)
    stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if row.platform == "shopify":
        body = {"query": SHOPIFY_MUTATION, "variables": {"input": {
            "customerId": f"gid://shopify/Customer/{row.remote_id}",
            "emailMarketingConsent": {"marketingState": "UNSUBSCRIBED", "consentUpdatedAt": stamp}}}}
        req = urllib.request.Request(base, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-Shopify-Access-Token": token})
    else:
        body = {"meta_data": [{"key": WOO_META_STATE, "value": "unsubscribed"},
                              {"key": WOO_META_UPDATED, "value": stamp}]}
        auth = base64.b64encode(token.encode()).decode()
        req = urllib.request.Request(f"{base.rstrip('/')}/wp-json/wc/v3/customers/{row.remote_id}",
                                     data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"})
    if not req.full_url.startswith(("https://", "http://")):
        raise _Refused(f"write-back URL {req.full_url[:100]} is not http(s)")
    return req


class _Refused(Exception):
    """The shop (or the configuration) refused this attempt; retried with backoff."""


def _lookup_request(settings, row: ConnectorOutbox, shop: ConnectorShop | None, address: str
                    ) -> urllib.request.Request:
    """The documented search for a customer by e-mail: Shopify Admin GraphQL ``customers(query:)``,
    WooCommerce ``GET /wp-json/wc/v3/customers?email=``."""
    token, base = _credentials(settings, row, shop)
    if row.platform == "shopify":
        # Shopify's search syntax: the address quoted, its quotes and backslashes escaped.
        quoted = address.replace("\\", "\\\\").replace('"', '\\"')
        body = {"query": SHOPIFY_LOOKUP, "variables": {"query": f'email:"{quoted}"'}}
        req = urllib.request.Request(base, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-Shopify-Access-Token": token})
    else:
        auth = base64.b64encode(token.encode()).decode()
        req = urllib.request.Request(f"{base.rstrip('/')}/wp-json/wc/v3/customers?"
                                     + urllib.parse.urlencode({"email": address, "role": "all"}),
                                     method="GET", headers={"Authorization": f"Basic {auth}"})
    if not req.full_url.startswith(("https://", "http://")):
        raise _Refused(f"write-back URL {req.full_url[:100]} is not http(s)")
    return req


def _lookup(req: urllib.request.Request, platform: str, address: str) -> str | None:
    """The shop's id for the customer with exactly ``address``, or None when it has none."""
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # nosec B310 - http(s) checked above
            answer = json.loads(resp.read(MAX_ANSWER_BYTES) or b"null")
    except urllib.error.HTTPError as exc:
        raise _Refused(f"HTTP {exc.code} from the shop (customer lookup)") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _Refused(f"could not reach the shop: {exc}") from exc
    except ValueError as exc:
        raise _Refused("the shop's answer to the customer lookup is not JSON") from exc
    if platform == "shopify":
        if not isinstance(answer, dict) or answer.get("errors") or not isinstance(answer.get("data"), dict):
            raise _Refused(f"Shopify refused the customer lookup: {json.dumps(answer)[:500]}")
        edges = ((answer["data"].get("customers") or {}).get("edges")) or []
        found = [e.get("node") or {} for e in edges if isinstance(e, dict)]
    else:
        if not isinstance(answer, list):
            raise _Refused(f"WooCommerce refused the customer lookup: {json.dumps(answer)[:500]}")
        found = [c for c in answer if isinstance(c, dict)]
    for customer in found:
        # The search may match loosely: only the same address counts.
        if str(customer.get("email") or "").strip().casefold() == address.casefold():
            remote = str(customer.get("id") or "").rsplit("/", 1)[-1]
            if remote and len(remote) <= MAX_REMOTE_ID_CHARS:
                return remote
    return None


def _post(req: urllib.request.Request, platform: str) -> None:
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # nosec B310 - http(s) checked above
            payload = resp.read(1_000_000)
    except urllib.error.HTTPError as exc:
        raise _Refused(f"HTTP {exc.code} from the shop") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _Refused(f"could not reach the shop: {exc}") from exc
    if platform == "shopify":
        try:
            answer = json.loads(payload or b"{}")
        except ValueError as exc:
            raise _Refused("the shop's answer is not JSON") from exc
        result = ((answer.get("data") or {}).get("customerEmailMarketingConsentUpdate") or {}) \
            if isinstance(answer, dict) else {}
        errors = (answer.get("errors") if isinstance(answer, dict) else None) or result.get("userErrors")
        if errors or not result:
            raise _Refused(f"Shopify refused: {json.dumps(errors)[:500]}")


def send(app: App, row_id: int) -> str | None:
    """Send one queued write-back; the row's status after, or None when it was not ours to send."""
    now = utcnow()
    with app.session() as s:
        # One conditional UPDATE claims the row: pending and due, or a lease run out.
        res = s.execute(update(ConnectorOutbox)
                        .where(ConnectorOutbox.id == row_id, ConnectorOutbox.status.in_(("pending", "sending")),
                               ConnectorOutbox.next_attempt_at <= now)
                        .values(status="sending", next_attempt_at=now + timedelta(seconds=SEND_LEASE_S),
                                attempts=ConnectorOutbox.attempts + 1)
                        .execution_options(synchronize_session=False))
        if not res.rowcount:
            return None
        row = s.get(ConnectorOutbox, row_id)
        shop = s.execute(select(ConnectorShop).where(ConnectorShop.platform == row.platform,
                                                     ConnectorShop.shop == row.shop)).scalar_one_or_none()
        address = customer_id = None
        if row.remote_id is None:
            # The customer's address, to look them up at the shop (consent event -> customer, two primary keys).
            customer_id, address = s.execute(select(Customer.id, Customer.email)
                                             .join(ConsentEvent, ConsentEvent.customer_id == Customer.id)
                                             .where(ConsentEvent.id == row.consent_event_id)).one_or_none() \
                or (None, None)
        s.expunge(row)
        if shop is not None:
            s.expunge(shop)
    if row.remote_id is None and address is None:
        return _close(app, row_id, "failed", "the address was erased before the shop's id for the customer was "
                                             "known: nothing to look the customer up by")
    try:
        if row.remote_id is None:
            remote = _lookup(_lookup_request(app.settings, row, shop, address), row.platform, address)
            if remote is None:
                return _close(app, row_id, "unknown", f"{row.platform}:{row.shop} has no customer with this address")
            _remember(app, row, customer_id, remote)
            row.remote_id = remote
        _post(_request(app.settings, row, shop), row.platform)
    except _Refused as exc:
        settings = app.settings
        give_up = row.attempts >= settings.connector_writeback_max_attempts
        wait = min(MAX_BACKOFF_S, settings.connector_writeback_backoff_s * 2 ** max(0, row.attempts - 1))
        with app.session() as s:
            s.execute(update(ConnectorOutbox).where(ConnectorOutbox.id == row_id, ConnectorOutbox.status == "sending")
                      .values(status="failed" if give_up else "pending", last_error=str(exc)[:MAX_ERROR_CHARS],
                              next_attempt_at=utcnow() + timedelta(seconds=wait)))
        log.warning("write-back %s to %s:%s attempt %s: %s%s", row_id, row.platform, row.shop, row.attempts, exc,
                    " (giving up)" if give_up else "")
        return "failed" if give_up else "pending"
    with app.session() as s:
        s.execute(update(ConnectorOutbox).where(ConnectorOutbox.id == row_id)
                  .values(status="sent", sent_at=utcnow(), last_error=None))
    return "sent"


def _close(app: App, row_id: int, status: str, detail: str) -> str:
    """A final outcome other than sent: nothing more to try."""
    with app.session() as s:
        s.execute(update(ConnectorOutbox).where(ConnectorOutbox.id == row_id, ConnectorOutbox.status == "sending")
                  .values(status=status, last_error=detail[:MAX_ERROR_CHARS], sent_at=utcnow()))
    return status


def _remember(app: App, row: ConnectorOutbox, customer_id: int | None, remote: str) -> None:
    """Keep the shop's id found by e-mail: on this row (a retry does not look again) and on the
    customer's link to the shop (later write-backs need no lookup)."""
    now = utcnow()
    with app.session() as s:
        s.execute(update(ConnectorOutbox).where(ConnectorOutbox.id == row.id).values(remote_id=remote))
        if customer_id is None:
            return
        s.execute(insert_or_ignore(s, ShopCustomer, dict(platform=row.platform, shop=row.shop,
                                                         customer_id=customer_id, remote_id=remote, updated_at=now),
                                   index_elements=["platform", "shop", "customer_id"]))
        # A link made earlier without the shop's id (a guest order) learns it; one primary-key row.
        s.execute(update(ShopCustomer).where(ShopCustomer.platform == row.platform, ShopCustomer.shop == row.shop,
                                             ShopCustomer.customer_id == customer_id,
                                             ShopCustomer.remote_id.is_(None))
                  .values(remote_id=remote, updated_at=now))


def pending_count(app: App) -> dict[tuple[str, str], dict[str, int]]:
    """Outbox rows per shop and status (for ``mailer connect status``)."""
    with app.session() as s:
        rows = s.execute(select(ConnectorOutbox.platform, ConnectorOutbox.shop, ConnectorOutbox.status, func.count())
                         .group_by(ConnectorOutbox.platform, ConnectorOutbox.shop, ConnectorOutbox.status)).all()
    out: dict[tuple[str, str], dict[str, int]] = {}
    for platform, shop, status, n in rows:
        out.setdefault((platform, shop), {})[status] = int(n)
    return out


def connect(app: App, platform: str, shop: str, *, secret: str | None, api_url: str | None,
            api_token: str | None) -> ConnectorShop:
    """Record (or update) a connected shop; new shops start writing back from now on."""
    with app.session() as s:
        row = s.execute(select(ConnectorShop).where(ConnectorShop.platform == platform, ConnectorShop.shop == shop)
                        ).scalar_one_or_none()
        if row is None:
            top = s.execute(select(func.max(ConsentEvent.seq))).scalar_one_or_none() or 0
            row = ConnectorShop(platform=platform, shop=shop, writeback_cursor=top, created_at=utcnow(),
                                updated_at=utcnow())
            s.add(row)
        if api_url:
            row.api_url = api_url
        # Credentials are stored sealed (AES-256-GCM under the database's own key), never in clear.
        for name, value in (("secret", secret), ("api_token", api_token)):
            if value:
                setattr(row, name, instance_secrets.seal(app.settings, value, platform=platform, shop=shop,
                                                         column=name))
        s.flush()
        s.expunge(row)
        return row


def known_shop(app: App, platform: str, shop: str) -> None:
    """Make sure a shop that delivers webhooks has its row (its write-back cursor starts now)."""
    with app.session() as s:
        # uq_connector_shops_platform_shop: one lookup, then an insert that a concurrent twin cannot double.
        if s.execute(select(ConnectorShop.id).where(ConnectorShop.platform == platform, ConnectorShop.shop == shop)
                     ).first() is not None:
            return
        top = s.execute(select(func.max(ConsentEvent.seq))).scalar_one_or_none() or 0
        s.execute(insert_or_ignore(s, ConnectorShop, dict(platform=platform, shop=shop, writeback_cursor=top,
                                                          created_at=utcnow(), updated_at=utcnow()),
                                   index_elements=["platform", "shop"]))
