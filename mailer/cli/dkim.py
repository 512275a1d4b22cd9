"""``mailer dkim keygen DIR`` and ``mailer dkim dns``: DKIM keys and the DNS records to publish."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli.base import console, main, pass_settings
from mailer.message.dkim import Signer, generate_keys


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys (rsa-sha256 and ed25519-sha256)."""


@dkim_group.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rsa-bits", default=2048, show_default=True, type=click.IntRange(1024, 4096),
              help="RSA key size in bits.")
@pass_settings
def keygen_cmd(settings, directory: Path, rsa_bits: int) -> None:
    """Write dkim-rsa.pem and dkim-ed25519.pem (mode 0600) into DIRECTORY; never overwrites."""
    rsa_path, ed_path = generate_keys(directory, rsa_bits=rsa_bits)
    console.print(f"wrote {rsa_path} and {ed_path}")
    console.print("set MAILER_DKIM_DOMAIN, MAILER_DKIM_RSA_KEY and MAILER_DKIM_ED25519_KEY, "
                  "then publish the records `mailer dkim dns` prints")


@dkim_group.command("dns")
@pass_settings
def dns_cmd(settings) -> None:
    """Print the TXT records for the configured keys (MAILER_DKIM_*)."""
    signer = Signer.from_settings(settings)
    if not signer.enabled:
        raise click.UsageError("no DKIM key configured (MAILER_DKIM_DOMAIN, MAILER_DKIM_RSA_KEY, "
                               "MAILER_DKIM_ED25519_KEY)")
    for line in signer.zone_lines():
        click.echo(line)
