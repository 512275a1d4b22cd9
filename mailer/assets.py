"""Mail assets: the packaged sample product images and the URLs mails use for them.

Templates never hard-code an image host.  Data (a shop's feed, or the shipped
``sample.json`` files) names a packaged image as ``asset:<file>``; :func:`resolve`
turns that into ``MAILER_ASSET_BASE_URL/<file>``.  Without a base URL (the demo) the
mail carries :data:`PLACEHOLDER_BASE_URL`, and the outbox transport copies the packaged
images to ``<outbox>/assets/`` and points its HTML copies there (relative URLs).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mailer.settings import Settings

#: The packaged sample images (PNG, a few KB each).
IMAGES_DIR = Path(__file__).resolve().parent / "demo_data" / "images"
#: What a data value names a packaged image with: ``asset:linen-shirt.png``.
ASSET_PREFIX = "asset:"
#: Base URL in mails when MAILER_ASSET_BASE_URL is empty (``.invalid`` never resolves; the
#: outbox rewrites it to its relative ``assets/`` folder).
PLACEHOLDER_BASE_URL = "https://assets.mailer.invalid/img"
#: Folder of the outbox (next to its .eml files) that holds the copied images.
OUTBOX_ASSETS_DIR = "assets"
#: Longest asset name accepted in ``asset:<name>``, characters.
MAX_ASSET_NAME_CHARS = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\.(png|jpg|jpeg|gif|svg)")


def base_url(settings: Settings) -> str:
    return (settings.asset_base_url or PLACEHOLDER_BASE_URL).rstrip("/")


def asset_url(settings: Settings, name: str) -> str:
    """The absolute URL of asset ``name`` for this deployment."""
    if len(name) > MAX_ASSET_NAME_CHARS or not _NAME.fullmatch(name):
        raise ValueError(f"asset name {name[:MAX_ASSET_NAME_CHARS]!r}: lower-case file name with an image "
                         "extension expected")
    return f"{base_url(settings)}/{name}"


def resolve(value: Any, settings: Settings) -> Any:
    """``value`` with every ``asset:<name>`` string (at any depth) turned into its URL."""
    if isinstance(value, str):
        return asset_url(settings, value[len(ASSET_PREFIX):]) if value.startswith(ASSET_PREFIX) else value
    if isinstance(value, dict):
        return {k: resolve(v, settings) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, settings) for v in value]
    return value


def localize_html(html: str) -> str:
    """An HTML copy for the outbox folder: placeholder image URLs become ``assets/<name>``."""
    return html.replace(PLACEHOLDER_BASE_URL + "/", OUTBOX_ASSETS_DIR + "/")


def copy_images(folder: Path) -> None:
    """Copy the packaged images into ``folder/assets/`` (each atomically; safe with many writers)."""
    target = folder / OUTBOX_ASSETS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for src in sorted(IMAGES_DIR.iterdir()):
        if not _NAME.fullmatch(src.name) or (target / src.name).exists():
            continue
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out)
            os.replace(tmp, target / src.name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
