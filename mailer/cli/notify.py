"""``mailer notify KIND --to ADDRESS --data JSON [--locale L] [--idempotency-key K]``."""

from __future__ import annotations

import click

from mailer.cli.base import check_locale, console, main, parse_json, pass_settings, setup_broker
from mailer.notices.trigger import notify


@main.command("notify")
@click.argument("kind")
@click.option("--to", "to", required=True, help="Recipient address.")
@click.option("--data", "data", default="{}", help="Template data as a JSON object.")
@click.option("--locale", default=None, help="Override the customer's locale (e.g. pl, zh-TW).",
              callback=check_locale)
@click.option("--idempotency-key", default=None, help="The same key twice sends one mail.")
@pass_settings
def notify_cmd(settings, kind: str, to: str, data: str, locale: str | None, idempotency_key: str | None) -> None:
    """Enqueue notice KIND (e.g. order_delayed) for one recipient; prints the delivery id."""
    payload = parse_json(data, option="--data")
    setup_broker(settings)

    delivery_id = notify(kind, to=to, data=payload, locale=locale, idempotency_key=idempotency_key,
                         settings=settings)
    console.print(f"enqueued delivery {delivery_id}")
