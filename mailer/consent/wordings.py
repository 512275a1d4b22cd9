"""Consent wordings: the exact words a person saw when they agreed, versioned, each version's SHA-256 stored.

A wording is a file, ``wordings/<id>.toml`` (folder ``MAILER_WORDINGS_DIR``), holding per
locale the text shown next to a checkbox or sign-up button and its version::

    [locales.en]
    version = "2026-12"
    text = "Yes, send me the Northwind newsletter. I can unsubscribe at any time."

    [locales.pl]
    version = "2026-12"
    text = "Tak, chcę otrzymywać newsletter Northwind. Mogę zrezygnować w każdej chwili."

Whenever mailer reads a file it registers every (id, locale, version) it finds in the
``wordings`` table with the SHA-256 of the exact UTF-8 text.  A version, once registered,
is frozen: the same version with other words is refused (bump the version instead), so
older versions stay provable after the file moved on.  A grant names a wording and a
version (:func:`resolve`); the ledger stores that text and its SHA-256 on the event, which
equals ``wordings.sha256``: a compliance officer can show the words behind any grant.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.errors import NotFound, ValidationError
from mailer.models import Wording
from mailer.rendering import i18n
from mailer.settings import Settings

#: Largest wording file read, bytes.
MAX_WORDING_FILE_BYTES = 64 * 1024
#: Longest wording text, characters.
MAX_WORDING_TEXT_CHARS = 4000
#: Longest version label, characters (consent_events.wording_version holds 50).
MAX_VERSION_CHARS = 50
#: Longest wording id, characters.
MAX_WORDING_ID_CHARS = 100
#: A wording id: what may name a file.
WORDING_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"
#: A version label.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$"
_ID = re.compile(WORDING_ID_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


@dataclass(frozen=True)
class Version:
    """One wording version in one locale."""

    wording_id: str
    locale: str
    version: str
    text: str
    sha256: str


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _path(settings: Settings, wording_id: str) -> Path:
    if not isinstance(wording_id, str) or not _ID.match(wording_id):
        raise NotFound(f"no wording {wording_id!r} (ids are lower-case letters, digits, '-' and '_')")
    return Path(settings.wordings_dir) / f"{wording_id}.toml"


def load_file(path: Path) -> dict[str, Version]:
    """The versions a wording file holds now, by locale; ValidationError naming the file, line or key."""
    wording_id = path.stem
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_WORDING_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFound(f"no wording {wording_id!r} ({path} does not exist)") from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read: {exc.strerror or exc}", where=str(path)) from None
    if len(raw) > MAX_WORDING_FILE_BYTES:
        raise ValidationError(f"{path}: larger than {MAX_WORDING_FILE_BYTES} bytes", where=str(path))
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValidationError(f"{path}: line {line}: not valid UTF-8", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"{path}: {exc}", where=str(path)) from None
    locales = data.get("locales")
    if not isinstance(locales, dict) or not locales:
        raise ValidationError(f"{path}: needs [locales.<locale>] tables with version and text", where=str(path))
    unknown = sorted(set(data) - {"locales", "description"})
    if unknown:
        raise ValidationError(f"{path}: unknown key(s) {', '.join(unknown)}; known: locales, description",
                              where=str(path))
    out: dict[str, Version] = {}
    for locale, entry in locales.items():
        where = f"{path}: locales.{locale}"
        if not i18n.is_valid_locale(locale):
            raise ValidationError(f"{where}: {locale!r} is not a locale tag such as en, pl or zh-TW", where=where)
        if not isinstance(entry, dict) or set(entry) != {"version", "text"}:
            raise ValidationError(f"{where}: needs exactly the keys version and text", where=where)
        version, text = entry["version"], entry["text"]
        if not isinstance(version, str) or not _VERSION.match(version):
            raise ValidationError(f"{where}.version: 1-{MAX_VERSION_CHARS} letters, digits, '.', '_' or '-'",
                                  where=where)
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_WORDING_TEXT_CHARS:
            raise ValidationError(f"{where}.text: 1-{MAX_WORDING_TEXT_CHARS} characters of text", where=where)
        out[locale] = Version(wording_id, locale, version, text, sha256(text))
    return out


def register(session: Session, versions: dict[str, Version]) -> None:
    """Store each version's text and SHA-256 once; a registered version whose words changed is refused."""
    if not versions:
        return
    first = next(iter(versions.values()))
    known = {(w.locale, w.version): w.sha256 for w in session.execute(
        select(Wording).where(Wording.wording_id == first.wording_id)).scalars()}
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for v in versions.values():
        stored = known.get((v.locale, v.version))
        if stored is None:
            # Two processes registering the same new version at once: either row is the same text.
            session.execute(insert(Wording).values(wording_id=v.wording_id, locale=v.locale, version=v.version,
                                                   sha256=v.sha256, text=v.text)
                            .on_conflict_do_nothing(index_elements=["wording_id", "locale", "version"]))
        elif stored != v.sha256:
            raise ValidationError(f"wordings/{v.wording_id}.toml: locales.{v.locale} version {v.version!r} "
                                  f"was registered with other words (sha256 {stored[:12]}…); a version never "
                                  "changes: give the new text a new version", where=f"wordings/{v.wording_id}.toml")


def current(session: Session, settings: Settings, wording_id: str, locale: str | None = None) -> Version:
    """The version to display for ``locale`` (its fallback chain, then the default locale)."""
    versions = load_file(_path(settings, wording_id))
    register(session, versions)
    for candidate in i18n.chain(locale, settings.default_locale):
        if candidate in versions:
            return versions[candidate]
    return versions[sorted(versions)[0]]


def resolve(session: Session, settings: Settings, wording_id: str, version: str,
            locale: str | None = None) -> Version:
    """The exact wording a grant names: the file's current version or any registered one.

    Raises ValidationError (``wording_id`` or ``wording_version``) when unknown.
    """
    try:
        versions = load_file(_path(settings, wording_id))
    except NotFound as exc:
        raise ValidationError(str(exc), field="wording_id") from None
    register(session, versions)
    rows = session.execute(select(Wording).where(Wording.wording_id == wording_id, Wording.version == version)
                           .order_by(Wording.locale)).scalars().all()
    if not rows:
        raise ValidationError(f"wording {wording_id!r} has no version {version!r}; current: "
                              f"{', '.join(sorted({v.version for v in versions.values()}))}", field="wording_version")
    by_locale = {r.locale: r for r in rows}
    chosen = next((by_locale[c] for c in i18n.chain(locale, settings.default_locale) if c in by_locale), rows[0])
    return Version(chosen.wording_id, chosen.locale, chosen.version, chosen.text, chosen.sha256)


def list_all(session: Session, settings: Settings) -> list[Version]:
    """Every wording version: the files' current ones registered first, then all the table holds."""
    folder = Path(settings.wordings_dir)
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            if _ID.match(path.stem):
                register(session, load_file(path))
    rows = session.execute(select(Wording).order_by(Wording.wording_id, Wording.locale, Wording.registered_at,
                                                    Wording.id)).scalars()
    return [Version(r.wording_id, r.locale, r.version, r.text, r.sha256) for r in rows]
