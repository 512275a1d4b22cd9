"""``mailer events publish TYPE --data JSON [--idempotency-key K]``: report a shop event."""

from __future__ import annotations

import json

import click

from mailer.automations.publish import publish
from mailer.cli.base import EXIT_REJECTED, console, err_console, main, parse_json, pass_settings, setup_broker


@main.group("events")
def events_group() -> None:
    """Shop events that drive the automations."""


@events_group.command("publish")
@click.argument("type_", metavar="TYPE")
@click.option("--data", "data", default="{}", help="The event's fields as a JSON object.")
@click.option("--idempotency-key", default=None, help="The same key again applies the event once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def publish_cmd(settings, type_: str, data: str, idempotency_key: str | None, as_json: bool) -> None:
    """Publish event TYPE (order_placed, order_delayed, order_shipped, order_shipment_problem, order_delivered,
    order_cancelled, order_refunded, cart_updated, cart_abandoned, product_restocked, customer_updated) and show what the
    automations did. Exit code 1 when an automation failed (e.g. a reward pool ran out)."""
    payload = parse_json(data, option="--data")
    setup_broker(settings)

    result = publish(type_, payload, idempotency_key=idempotency_key, settings=settings)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        head = f"event {result.event_id} ({result.type})"
        if result.duplicate:
            console.print(f"{head}: already received under this idempotency key; nothing applied again",
                          markup=False)
        elif not result.actions:
            console.print(f"{head}: stored; no automation acted on it", markup=False)
        else:
            console.print(f"{head}:", markup=False)
            for a in result.actions:
                parts = [f"  {a.automation} ({a.kind}): {a.outcome}"]
                if a.delivery_id:
                    parts.append(f"delivery {a.delivery_id}")
                if a.customer_id:
                    parts.append(f"customer {a.customer_id}")
                if a.send_after:
                    parts.append(f"at {a.send_after.strftime('%Y-%m-%d %H:%M')} UTC")
                line = ", ".join(parts)
                console.print(f"{line}: {a.detail}" if a.detail else line, markup=False, highlight=False,
                              soft_wrap=True)
    for failure in result.failures:
        err_console.print(f"error: automation {failure.automation}: {failure.detail}", markup=False)
    if result.failures:
        raise SystemExit(EXIT_REJECTED)
