"""Shopify's mandatory privacy topics: ``customers/data_request``, ``customers/redact``, ``shop/redact``.

* ``customers/data_request``: mailer's access export (:func:`mailer.gdpr.requests.export`) of
  the customer, written as JSON to ``MAILER_CONNECTOR_EXPORT_DIR/<shop>/`` (file mode 0600),
  named after the request id; the shop owner hands it to the customer.  Nothing is mailed:
  the export holds personal data and goes only where the operator put the folder.
* ``customers/redact``: mailer's erasure (:func:`mailer.gdpr.requests.erase`), plus what the
  connector holds about that customer for that shop.
* ``shop/redact``: everything held for the shop: customers known only from this shop are
  erased; customers also known from another shop lose only this shop's link; the shop's
  deliveries, orders, stock, outbox and its connection are deleted.

Each is recorded in the audit trail (:func:`_audit`: actor ``shopify:<shop>``, actions
``gdpr.export`` / ``gdpr.erase`` / ``shop.redact``) with :func:`mailer.audit.record`, in the
same transaction as the export or erasure.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailer import audit
from mailer.addresses import email_hash
from mailer.connectors import common as c
from mailer.connectors.common import Ctx
from mailer.errors import NotFound
from mailer.gdpr import requests as gdpr
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    ConnectorItem,
    ConnectorOrder,
    ConnectorOutbox,
    ConnectorShop,
    ConnectorWebhook,
    Customer,
    ShopCustomer,
)

log = logging.getLogger("mailer.audit")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _audit(session: Session, ctx: Ctx, action: str, target: str, detail: dict | None = None) -> None:
    """The one call site of the audit trail for the privacy topics (in the request's transaction)."""
    audit.record(session, actor=f"{ctx.platform}:{ctx.shop}", action=action, target=target, detail=detail)
    log.info("audit actor=%s action=%s target=%s", f"{ctx.platform}:{ctx.shop}", action, target)


def data_request(ctx: Ctx, p: dict) -> None:
    customer = c.obj(p.get("customer"))
    address = c.email(customer.get("email"))
    request_id = c.ident(c.obj(p.get("data_request")).get("id")) or ctx.webhook_id
    folder = Path(ctx.settings.connector_export_dir) / _SAFE.sub("_", ctx.shop)
    with ctx.app.session() as s:
        try:
            document = gdpr.export(s, ctx.settings, address) if address else None
        except NotFound:
            document = None  # nothing held: the file says so
        document = {"shop": ctx.shop, "data_request_id": request_id, "shopify_customer_id": customer.get("id"),
                    "orders_requested": c.items_of(p.get("orders_requested"))[:1000], "mailer_export": document}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"data_request-{_SAFE.sub('_', request_id)}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, ensure_ascii=False, indent=2, default=str)
        _audit(s, ctx, "gdpr.export", f"customer:{customer.get('id')}", {"request": request_id, "file": str(path)})
    ctx.note(f"access export written to {path}")


def redact_customer(ctx: Ctx, p: dict) -> None:
    customer = c.obj(p.get("customer"))
    address = c.email(customer.get("email"))
    if address is None:
        ctx.note("customers/redact without an e-mail: nothing held")
        return
    with ctx.app.session() as s:
        live = s.execute(select(Customer.id).where(Customer.email == address)).scalar_one_or_none()
        if live is not None:
            # The shop asked: its link and orders for this customer go before the erasure,
            # so nothing is written back to a customer the shop has redacted.
            s.execute(delete(ShopCustomer).where(ShopCustomer.platform == ctx.platform, ShopCustomer.shop == ctx.shop,
                                                 ShopCustomer.customer_id == live))
            s.execute(delete(ConnectorOrder).where(ConnectorOrder.platform == ctx.platform,
                                                   ConnectorOrder.shop == ctx.shop,
                                                   ConnectorOrder.customer_id == live))
        report = gdpr.erase(s, ctx.settings, address)
        _audit(s, ctx, "gdpr.erase", f"customer:{customer.get('id')}",
               {"email_hash": email_hash(address, address_hash_salt(ctx.settings)), **report.as_dict()})
    ctx.note(f"erased ({report.customers} customer, {report.deliveries} deliveries)")


def redact_shop(ctx: Ctx, p: dict) -> None:
    erased = unlinked = 0
    with ctx.app.session() as s:
        # Every customer this shop told us about, with whether another shop knows them too.
        linked = s.execute(select(ShopCustomer.customer_id).where(ShopCustomer.platform == ctx.platform,
                                                                  ShopCustomer.shop == ctx.shop)).scalars().all()
        for customer_id in linked:
            others = s.execute(select(ShopCustomer.shop).where(ShopCustomer.customer_id == customer_id,
                                                               ShopCustomer.shop != ctx.shop).limit(1)).first()
            address = s.execute(select(Customer.email).where(Customer.id == customer_id)).scalar_one_or_none()
            s.execute(delete(ShopCustomer).where(ShopCustomer.platform == ctx.platform, ShopCustomer.shop == ctx.shop,
                                                 ShopCustomer.customer_id == customer_id))
            if others is None and address:
                gdpr.erase(s, ctx.settings, address)
                erased += 1
            else:
                unlinked += 1
        for table in (ConnectorOrder, ConnectorItem, ConnectorOutbox):
            s.execute(delete(table).where(table.platform == ctx.platform, table.shop == ctx.shop))
        # The shop's other deliveries go; this one stays (without its body) as the record of the redact.
        s.execute(delete(ConnectorWebhook).where(ConnectorWebhook.platform == ctx.platform,
                                                 ConnectorWebhook.shop == ctx.shop,
                                                 ConnectorWebhook.webhook_id != ctx.webhook_id))
        s.execute(delete(ConnectorShop).where(ConnectorShop.platform == ctx.platform, ConnectorShop.shop == ctx.shop))
        _audit(s, ctx, "shop.redact", f"shop:{ctx.shop}", {"erased": erased, "unlinked": unlinked})
    ctx.note(f"shop redacted: {erased} customers erased, {unlinked} kept for other shops")


TOPICS = {
    "customers/data_request": data_request,
    "customers/redact": redact_customer,
    "shop/redact": redact_shop,
}
