"""``mailer suppressions list EMAIL``, ``add EMAIL --reason TEXT``, ``remove EMAIL ID --reason TEXT``.

The same service as the console's customer page (:mod:`mailer.consent.suppressions`):
a person adds ``manual`` suppressions with a reason and lifts manual and bounce ones;
erasure, complaint and unsubscribe rows are never lifted by hand.
"""

from __future__ import annotations

import click

from mailer import db
from mailer.addresses import email_hash, normalize
from mailer.cli.base import console, main, pass_settings
from mailer.consent import suppressions
from mailer.instance_secrets import address_hash_salt


def _hash(settings, email: str) -> tuple[str, str]:
    address = normalize(email)
    return address, email_hash(address, address_hash_salt(settings))


@main.group("suppressions")
def suppressions_group() -> None:
    """The suppression list: addresses never mailed again (for a scope)."""


@suppressions_group.command("list")
@click.argument("email")
@pass_settings
def list_cmd(settings, email: str) -> None:
    """Every suppression of EMAIL (found by its salted hash, also after erasure)."""
    address, h = _hash(settings, email)
    with db.session_scope(settings) as s:
        rows = [(r.id, r.reason.value, r.scope, f"{r.created_at:%Y-%m-%d}", r.detail or "")
                for r in suppressions.for_address(s, h)]
    if not rows:
        console.print(f"{address}: not suppressed", highlight=False, markup=False, soft_wrap=True)
    for row in rows:
        console.print("  ".join(str(v) for v in row), highlight=False, markup=False, soft_wrap=True)


@suppressions_group.command("add")
@click.argument("email")
@click.option("--reason", required=True, help="Why (kept with the suppression).")
@click.option("--scope", default="all", show_default=True, help="all, marketing or one purpose.")
@pass_settings
def add_cmd(settings, email: str, reason: str, scope: str) -> None:
    """Suppress EMAIL by hand (reason manual)."""
    address, h = _hash(settings, email)
    with db.session_scope(settings) as s:
        row = suppressions.add_manual(s, address_hash=h, email=address, reason=reason, scope=scope)
        sid = row.id
    console.print(f"suppressed {address} (scope {scope}); suppression {sid}", highlight=False, markup=False,
                  soft_wrap=True)


@suppressions_group.command("remove")
@click.argument("email")
@click.argument("suppression_id", type=int)
@click.option("--reason", required=True, help="Why it is lifted.")
@pass_settings
def remove_cmd(settings, email: str, suppression_id: int, reason: str) -> None:
    """Lift suppression SUPPRESSION_ID of EMAIL (manual and bounce ones only)."""
    address, h = _hash(settings, email)
    with db.session_scope(settings) as s:
        row = suppressions.remove(s, suppression_id=suppression_id, address_hash=h, reason=reason)
        what = f"{row.reason.value}, scope {row.scope}"
    console.print(f"lifted suppression {suppression_id} of {address} ({what})", highlight=False, markup=False,
                  soft_wrap=True)
