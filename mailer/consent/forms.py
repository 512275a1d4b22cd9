"""Sign-up and restock forms: the ``forms/<id>.toml`` files (folder ``MAILER_FORMS_DIR``) and their checks.

A form is a file; this module owns reading it, bounded, with errors naming the file and
the field.  It knows nothing of HTTP or mail: the hosted page and ``POST /f/{id}`` are
:mod:`mailer.web.pages.forms`, the sign-up itself (abuse limits, double opt-in) is
:mod:`mailer.notices.signups`.  See docs/forms.md for the file format::

    kind = "signup"                       # or "restock" (email plus a hidden sku)
    purposes = ["newsletter"]             # signup forms; a restock form's purpose is restock:<sku>
    fields = ["email", "first_name", "locale"]
    double_opt_in = true                  # public forms always confirm by mail
    success_url = "https://shop.example.com/thanks"
    error_url = "https://shop.example.com/sign-up-failed"
    allowed_origins = ["https://shop.example.com"]

    [wording]
    id = "newsletter"
    version = "2026-12"

    [theme]
    "--mailer-accent" = "#1f4e79"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mailer.consent import wordings
from mailer.errors import NotFound, ValidationError
from mailer.settings import Settings

#: Largest form file read, bytes.
MAX_FORM_FILE_BYTES = 32 * 1024
#: A form id: what may name a file and a URL path segment.
FORM_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Most purposes on one form.
MAX_FORM_PURPOSES = 10
#: Most allowed origins on one form.
MAX_ALLOWED_ORIGINS = 20
#: Most theme variables on one form.
MAX_THEME_VARIABLES = 30
#: Longest URL in a form file, characters.
MAX_URL_CHARS = 2000
#: A theme variable name (a CSS custom property).
THEME_NAME_PATTERN = r"^--[a-z0-9][a-z0-9-]{0,40}$"
#: A theme value: colours, lengths, font names; nothing that could end the declaration or the style.
THEME_VALUE_PATTERN = r"^[A-Za-z0-9#.,%()\s-]{1,100}$"
#: A SKU as a restock form accepts it (as the product_restocked event: no spaces, ':' or braces).
SKU_PATTERN = r"^[^\s:{}<>\"'&]{1,100}$"

KINDS = ("signup", "restock")
FIELDS = ("email", "first_name", "locale")
_KEYS = {"kind", "purposes", "fields", "double_opt_in", "success_url", "error_url", "allowed_origins",
         "wording", "theme", "description"}
_ID = re.compile(FORM_ID_PATTERN)
_THEME_NAME = re.compile(THEME_NAME_PATTERN)
_THEME_VALUE = re.compile(THEME_VALUE_PATTERN)
_SKU = re.compile(SKU_PATTERN)


@dataclass(frozen=True)
class Form:
    """One form as its file sets it."""

    form_id: str
    kind: str
    purposes: tuple[str, ...]
    fields: tuple[str, ...]
    wording_id: str | None
    wording_version: str | None
    success_url: str | None = None
    error_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    theme: dict[str, str] = field(default_factory=dict)
    double_opt_in: bool = True

    def purposes_for(self, sku: str | None) -> tuple[str, ...]:
        """The purposes one submission asks for (``restock:<sku>`` for a restock form)."""
        return (f"restock:{sku}",) if self.kind == "restock" else self.purposes


def valid_sku(sku: str) -> bool:
    return bool(_SKU.match(sku))


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, lower-case, default ports dropped; None if it has none."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    if scheme not in ("http", "https") or not netloc or "@" in netloc:
        return None
    default = {"http": ":80", "https": ":443"}[scheme]
    if netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme}://{netloc}"


def _url(path: Path, data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or origin_of(value) is None \
            or any(ord(c) < 33 for c in value):
        raise ValidationError(f"{path}: {key}: an absolute http(s) URL of at most {MAX_URL_CHARS} characters",
                              where=f"{path}: {key}")
    return value


def path_of(settings: Settings, form_id: str) -> Path:
    if not isinstance(form_id, str) or not _ID.match(form_id):
        raise NotFound(f"no form {form_id!r}")
    return Path(settings.forms_dir) / f"{form_id}.toml"


def load(settings: Settings, form_id: str) -> Form:
    """The form ``forms/<form_id>.toml``: NotFound when there is none, ValidationError naming file and field."""
    path = path_of(settings, form_id)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FORM_FILE_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"no form {form_id!r}") from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read: {exc.strerror or exc}", where=str(path)) from None
    return parse(path, raw, settings)


def parse(path: Path, raw: bytes, settings: Settings) -> Form:
    """Check a form file's bytes (``path`` names it in errors)."""
    if len(raw) > MAX_FORM_FILE_BYTES:
        raise ValidationError(f"{path}: larger than {MAX_FORM_FILE_BYTES} bytes", where=str(path))
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValidationError(f"{path}: line {line}: not valid UTF-8", where=f"{path}:{line}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"{path}: {exc}", where=str(path)) from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValidationError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}",
                              where=str(path))

    def bad(key: str, message: str) -> ValidationError:
        return ValidationError(f"{path}: {key}: {message}", where=f"{path}: {key}")

    kind = data.get("kind", "signup")
    if kind not in KINDS:
        raise bad("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    purposes = data.get("purposes", [])
    if kind == "signup":
        if not isinstance(purposes, list) or not 1 <= len(purposes) <= MAX_FORM_PURPOSES:
            raise bad("purposes", f"a list of 1-{MAX_FORM_PURPOSES} purposes ({', '.join(settings.purposes)})")
        for i, p in enumerate(purposes):
            if not isinstance(p, str) or p not in settings.purposes:
                raise bad(f"purposes[{i}]", f"{p!r} is not a configured purpose ({', '.join(settings.purposes)})")
        if len(set(purposes)) != len(purposes):
            raise bad("purposes", "names a purpose twice")
    elif purposes:
        raise bad("purposes", "a restock form's purpose is restock:<sku>, from its hidden sku field; remove this")
    fields = data.get("fields", ["email"])
    if not isinstance(fields, list) or "email" not in fields:
        raise bad("fields", "a list that holds \"email\" (and optionally first_name, locale)")
    for i, f in enumerate(fields):
        if f not in FIELDS:
            raise bad(f"fields[{i}]", f"{f!r} is not one of {', '.join(FIELDS)}")
    if kind == "restock" and "first_name" in fields:
        raise bad("fields", "a restock form asks for the address only (and locale)")
    if data.get("double_opt_in", True) is not True:
        raise bad("double_opt_in", "a public form always confirms by mail; it must be true (or left out)")
    wording = data.get("wording")
    wording_id = wording_version = None
    if wording is not None:
        if not isinstance(wording, dict) or set(wording) != {"id", "version"}:
            raise bad("wording", "a table with exactly id and version")
        wording_id, wording_version = wording["id"], wording["version"]
        if not isinstance(wording_id, str) or not re.match(wordings.WORDING_ID_PATTERN, wording_id):
            raise bad("wording.id", "a wording id (wordings/<id>.toml)")
        if not isinstance(wording_version, str) or not re.match(wordings.VERSION_PATTERN, wording_version):
            raise bad("wording.version", "a version label such as 2026-12")
    elif kind == "signup":
        raise bad("wording", "a sign-up form names the wording it shows: [wording] id and version")
    origins = data.get("allowed_origins", [])
    if not isinstance(origins, list) or len(origins) > MAX_ALLOWED_ORIGINS:
        raise bad("allowed_origins", f"a list of at most {MAX_ALLOWED_ORIGINS} origins")
    clean: list[str] = []
    for i, o in enumerate(origins):
        origin = origin_of(o) if isinstance(o, str) else None
        if origin is None or origin != o.strip().lower().rstrip("/"):
            raise bad(f"allowed_origins[{i}]", f"{o!r} is not an origin such as https://shop.example.com "
                      "(scheme and host, no path)")
        clean.append(origin)
    theme = data.get("theme", {})
    if not isinstance(theme, dict) or len(theme) > MAX_THEME_VARIABLES:
        raise bad("theme", f"a table of at most {MAX_THEME_VARIABLES} CSS variables")
    for name, value in theme.items():
        if not _THEME_NAME.match(name):
            raise bad(f"theme.{name}", "a CSS variable name such as --mailer-accent")
        if not isinstance(value, str) or not _THEME_VALUE.match(value):
            raise bad(f"theme.{name}", "a CSS value of letters, digits, spaces and # . , % ( ) - only")
    return Form(form_id=path.stem, kind=kind, purposes=tuple(purposes), fields=tuple(fields),
                wording_id=wording_id, wording_version=wording_version,
                success_url=_url(path, data, "success_url"), error_url=_url(path, data, "error_url"),
                allowed_origins=tuple(clean), theme=dict(theme))
