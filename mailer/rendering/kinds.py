"""Kind declarations: ``kind.toml`` read into KindSpec / FieldSpec, and data checked against them.

A kind is a folder ``templates/<kind>/`` (newsletters: ``templates/newsletter/<name>/``)
holding ``kind.toml`` (schema, lawful basis, subject and preheader per locale),
``sample.json`` and one ``<locale>.mjml`` per locale.  This module reads ``kind.toml``
(:func:`_parse_kind`, raising :class:`~mailer.errors.TemplateError` with file, line and
field) and checks one data value against its declared field (:func:`_check_value`,
raising :class:`~mailer.errors.ValidationError` / :class:`~mailer.errors.MissingField`
naming the data field).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailer.errors import FormatError, MissingField, TemplateError, ValidationError
from mailer.rendering import i18n

TRANSACTIONAL = "transactional"
#: The locales every kind is written in (``mailer templates check`` reports gaps).
SUPPORTED_LOCALES = ("en", "zh-TW", "zh-CN", "pl", "ko", "fr", "ar")
#: Field types ``kind.toml`` may declare under ``[fields.<name>] type = ...``.
FIELD_TYPES = frozenset({"text", "url", "number", "date", "datetime", "list", "object", "bool", "any"})


# =========================================================================================
# Kind declarations
# =========================================================================================
@dataclass(frozen=True)
class FieldSpec:
    """One declared data field (``[fields.<name>]`` in kind.toml; all keys optional)."""

    name: str
    type: str = "any"
    description: str = ""
    #: For ``type = "list"`` of objects: keys every item must have / may have.
    item_required: tuple[str, ...] = ()
    item_optional: tuple[str, ...] = ()
    #: Allowed values (e.g. a status code).
    choices: tuple[str, ...] = ()
    #: For lists: exact number of items required (e.g. 5 rating links).
    length: int | None = None
    #: For lists of objects: declared types of item keys (``{price = "number"}``).
    item_types: dict[str, str] = field(default_factory=dict)

    @property
    def item_specs(self) -> dict[str, FieldSpec]:
        """``item_types`` as field specs (built once per spec)."""
        cached = self.__dict__.get("_item_specs")
        if cached is None:
            cached = {k: FieldSpec(name=k, type=t) for k, t in self.item_types.items()}
            object.__setattr__(self, "_item_specs", cached)
        return cached


@dataclass(frozen=True)
class KindSpec:
    """What ``templates/<kind>/kind.toml`` declares."""

    name: str
    path: Path
    #: "transactional" or the consent purpose the mail needs ("newsletter", "loyalty", "restock:{sku}").
    purpose: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    subjects: dict[str, str]
    preheaders: dict[str, str] = field(default_factory=dict)
    description: str = ""
    fields: dict[str, FieldSpec] = field(default_factory=dict)

    @property
    def transactional(self) -> bool:
        return self.purpose == TRANSACTIONAL

    @property
    def newsletter(self) -> bool:
        return self.name.startswith("newsletter/")

    @property
    def locales(self) -> list[str]:
        """Locales with a template file (read once per spec; ``Renderer.forget()`` rereads)."""
        cached = self.__dict__.get("_locales")
        if cached is None:
            cached = sorted(p.stem for p in self.path.glob("*.mjml"))
            object.__setattr__(self, "_locales", cached)
        return list(cached)

def _parse_kind(name: str, path: Path) -> KindSpec:
    toml_path = path / "kind.toml"
    try:
        meta = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise TemplateError(f"kind.toml is not valid TOML: {exc}", template=str(toml_path),
                            line=int(line.group(1)) if line else None) from exc
    default_purpose = "newsletter" if name.startswith("newsletter/") else TRANSACTIONAL
    fields: dict[str, FieldSpec] = {}
    for fname, fmeta in (meta.get("fields") or {}).items():
        if not isinstance(fmeta, dict):
            raise TemplateError(f"[fields.{fname}] must be a table", template=str(toml_path), field=fname)
        ftype = fmeta.get("type", "any")
        if ftype not in FIELD_TYPES:
            raise TemplateError(f"[fields.{fname}] type {ftype!r} is not one of {', '.join(sorted(FIELD_TYPES))}",
                                template=str(toml_path), field=fname)
        fields[fname] = FieldSpec(name=fname, type=ftype, description=fmeta.get("description", ""),
                                  item_required=tuple(fmeta.get("item_required", ())),
                                  item_optional=tuple(fmeta.get("item_optional", ())),
                                  choices=tuple(fmeta.get("choices", ())), length=fmeta.get("length"),
                                  item_types=dict(fmeta.get("item_types", {})))
        for key, ktype in fields[fname].item_types.items():
            if ktype not in FIELD_TYPES:
                raise TemplateError(f"[fields.{fname}] item_types.{key} {ktype!r} is not one of "
                                    f"{', '.join(sorted(FIELD_TYPES))}", template=str(toml_path), field=fname)
    required = tuple(meta.get("required", ()))
    optional = tuple(meta.get("optional", ()))
    undeclared = sorted(set(fields) - set(required) - set(optional))
    if undeclared:
        raise TemplateError(f"[fields] describes {', '.join(undeclared)} which is in neither required nor optional",
                            template=str(toml_path), field=undeclared[0])
    return KindSpec(name=name, path=path, purpose=meta.get("purpose", default_purpose), required=required,
                    optional=optional, subjects=dict(meta.get("subject", {})),
                    preheaders=dict(meta.get("preheader", {})), description=meta.get("description", ""),
                    fields=fields)


_URL = re.compile(r"https?://\S+$")


def _type_problem(t: str, value: Any) -> str | None:
    """Why ``value`` is not of field type ``t`` (None when it is); lists are checked by the caller."""
    if t == "text":
        return None if isinstance(value, (str, int, float, dict)) else f"must be text, got {type(value).__name__}"
    if t == "number":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            f"must be a number (not text), got {value!r}"
    if t == "url":
        return None if isinstance(value, str) and _URL.match(value) else f"must be an http(s) URL, got {value!r}"
    if t == "object":
        return None if isinstance(value, dict) else f"must be an object, got {type(value).__name__}"
    if t == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if t == "date":
        try:
            i18n.to_date(value)
        except FormatError:
            return f"must be an ISO date like 2026-12-01, got {value!r}"
    elif t == "datetime":
        try:
            i18n.to_datetime(value)
        except FormatError:
            return f"must be an ISO date-time like 2026-12-01T15:30:00Z, got {value!r}"
    return None


def _check_value(kind: str, fspec: FieldSpec | None, name: str, value: Any) -> None:
    """Raise ValidationError (MissingField for absent item keys) when ``value`` does not fit its field."""
    if fspec is None or value is None:
        return
    t = fspec.type
    if t == "list":
        if not isinstance(value, list):
            problem = f"must be a list, got {type(value).__name__}"
        elif fspec.length is not None and len(value) != fspec.length:
            problem = f"must have exactly {fspec.length} items, got {len(value)}"
        else:
            problem = None
            required, specs = fspec.item_required, fspec.item_specs
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    if required or specs:
                        problem = f"item {i} must be an object with {', '.join(required or specs)}"
                        break
                    continue
                for key in required:
                    if item.get(key) in (None, ""):
                        raise MissingField(f"{kind}: {name}[{i}] has no {key!r}", field=f"data.{name}[{i}].{key}")
                for key, kspec in specs.items():
                    v = item.get(key)
                    if v is not None and _type_problem(kspec.type, v) is not None:
                        raise ValidationError(f"{kind}: data field '{name}[{i}].{key}' "
                                              f"{_type_problem(kspec.type, v)}", field=f"data.{name}[{i}].{key}")
    elif t == "any":
        problem = None
    else:
        problem = _type_problem(t, value)
    if problem is None and fspec.choices and value not in fspec.choices:
        problem = f"must be one of {', '.join(fspec.choices)}, got {value!r}"
    if problem is not None:
        raise ValidationError(f"{kind}: data field {name!r} {problem}", field=f"data.{name}")
