"""``mailer connect shopify|woocommerce`` (record a shop, print the webhooks to create) and ``mailer connect status``."""

from __future__ import annotations

import secrets

import click
from rich.table import Table

from mailer.app import App
from mailer.cli.base import console, err_console, main, pass_settings
from mailer.connectors import inbox, signing, writeback
from mailer.connectors.privacy import TOPICS as PRIVACY_TOPICS
from mailer.connectors.shopify import TOPICS as SHOPIFY_TOPICS
from mailer.connectors.woocommerce import TOPICS as WOO_TOPICS

#: Bytes of randomness in a generated WooCommerce webhook secret.
WOO_SECRET_BYTES = 32


@main.group("connect")
def connect_group() -> None:
    """Connect a Shopify shop or a WooCommerce store: webhooks in, consent written back."""


def _webhook_table(url: str, topics) -> Table:
    table = Table("topic", "URL", "format")
    for topic in topics:
        table.add_row(topic, url, "JSON")
    return table


@connect_group.command("shopify")
@click.option("--shop", required=True, help="The shop's domain, e.g. my-shop.myshopify.com.")
@click.option("--secret", default=None, help="The app's client secret (signs the webhooks); or MAILER_SHOPIFY_SECRETS.")
@click.option("--api-token", default=None, help="Admin API access token (write_customers) for the consent write-back.")
@click.option("--api-url", default=None, help="Admin GraphQL URL (default https://<shop>/admin/api/"
                                               f"{writeback.SHOPIFY_API_VERSION}/graphql.json).")
@pass_settings
def shopify_cmd(settings, shop: str, secret: str | None, api_token: str | None, api_url: str | None) -> None:
    """Record the shop and print exactly which webhooks to create."""
    name = signing.normalize_shop("shopify", shop)
    if name is None:
        raise click.BadParameter(f"{shop[:80]!r} is not a *.myshopify.com domain", param_hint="--shop")
    writeback.connect(App(settings), "shopify", name, secret=secret, api_url=api_url, api_token=api_token)
    url = f"{settings.base_url.rstrip('/')}/webhooks/shopify"
    console.print(f"Shopify shop {name} connected. Create these webhook subscriptions "
                  f"(API version {writeback.SHOPIFY_API_VERSION}, format JSON):", highlight=False)
    console.print(_webhook_table(url, SHOPIFY_TOPICS))
    console.print("Mandatory privacy webhooks (the app's compliance webhooks, same URL):", highlight=False)
    console.print(_webhook_table(url, PRIVACY_TOPICS))
    console.print("In shopify.app.toml:\n\n[webhooks]\napi_version = \"" + writeback.SHOPIFY_API_VERSION + "\"\n\n"
                  "[[webhooks.subscriptions]]\ntopics = [" + ", ".join(f'"{t}"' for t in SHOPIFY_TOPICS) + "]\n"
                  f"uri = \"{url}\"\n\n[[webhooks.subscriptions]]\ncompliance_topics = ["
                  + ", ".join(f'"{t}"' for t in PRIVACY_TOPICS) + f"]\nuri = \"{url}\"\n",
                  highlight=False, markup=False)
    if not secret and name not in signing.env_secrets(settings, "shopify"):
        err_console.print("No secret yet: deliveries get 401 until --secret or MAILER_SHOPIFY_SECRETS gives the "
                          "app's client secret.", highlight=False)
    if not api_token:
        err_console.print("No --api-token: withdrawals made in mailer wait in the outbox until one is given.",
                          highlight=False)


@connect_group.command("woocommerce")
@click.option("--url", "store_url", required=True, help="The store's URL, as X-WC-Webhook-Source sends it.")
@click.option("--secret", default=None, help="The webhooks' secret (generated and printed when not given).")
@click.option("--api-key", default=None, help="REST API key as consumer_key:consumer_secret (write) for the write-back.")
@pass_settings
def woocommerce_cmd(settings, store_url: str, secret: str | None, api_key: str | None) -> None:
    """Record the store and print exactly which webhooks to create (WooCommerce > Settings > Advanced > Webhooks)."""
    name = signing.normalize_shop("woocommerce", store_url)
    if name is None:
        raise click.BadParameter(f"{store_url[:80]!r} is not an http(s) store URL", param_hint="--url")
    if api_key is not None and ":" not in api_key:
        raise click.BadParameter("give consumer_key:consumer_secret", param_hint="--api-key")
    generated = not secret and name not in signing.env_secrets(settings, "woocommerce")
    if generated:
        secret = secrets.token_urlsafe(WOO_SECRET_BYTES)
    writeback.connect(App(settings), "woocommerce", name, secret=secret, api_url=name, api_token=api_key)
    url = f"{settings.base_url.rstrip('/')}/webhooks/woocommerce"
    console.print(f"WooCommerce store {name} connected. Create these webhooks (status Active, "
                  "API version WP REST API Integration v3):", highlight=False)
    console.print(_webhook_table(url, WOO_TOPICS))
    if generated:
        console.print(f"Secret for every one of them: {secret}", highlight=False, markup=False)
    if not api_key:
        err_console.print("No --api-key: withdrawals made in mailer wait in the outbox until one is given.",
                          highlight=False)


@connect_group.command("status")
@pass_settings
def status_cmd(settings) -> None:
    """Per shop and topic: the last delivery, failures, waiting, ignored and duplicate deliveries; the outbox."""
    app = App(settings)
    rows = inbox.status(app)
    table = Table("platform", "shop", "topic", "last delivery (UTC)", "deliveries", "failed", "waiting", "ignored",
                  "duplicates")
    for r in rows:
        table.add_row(r.platform, r.shop, r.topic, f"{r.last_received_at:%Y-%m-%d %H:%M:%S}", str(r.deliveries),
                      str(r.failed), str(r.pending), str(r.ignored), str(r.duplicates))
    if rows:
        console.print(table)
    else:
        console.print("No deliveries yet.", highlight=False)
    outbox = writeback.pending_count(app)
    if outbox:
        out = Table("platform", "shop", "write-backs sent", "waiting", "failed", "not a customer there")
        for (platform, shop), counts in sorted(outbox.items()):
            out.add_row(platform, shop, str(counts.get("sent", 0)),
                        str(counts.get("pending", 0) + counts.get("sending", 0)), str(counts.get("failed", 0)),
                        str(counts.get("unknown", 0)))
        console.print(out)
