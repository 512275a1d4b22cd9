"""Customer search by e-mail or name prefix, fast on a million customers.

Every search is a prefix turned into a half-open range on an indexed key, so it is an
index range scan with a LIMIT whatever the table size:

* an e-mail prefix: ``email >= p AND email < p'`` over the unique index on ``email``
  (addresses are stored normalized, lower-case);
* a name prefix: the same over ``lower(first_name)`` and ``lower(last_name)``
  (expression indexes of migration 0013).  Two words look for "first last" and
  "last first".

``p'`` is ``p`` with its last character incremented; a result is checked against the
prefix once more in SQL, so a database collation that sorts differently from code
points can add no false hit.  SQLite's ``lower()`` folds ASCII only: a non-ASCII name
is found by its exact case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from mailer.errors import ValidationError
from mailer.models import Customer

#: Longest search text, characters (an address is at most 320).
QUERY_MAX_CHARS = 320
#: Most customers one search returns.
RESULTS_MAX_ROWS = 50
#: Default number of results shown.
RESULTS_DEFAULT_ROWS = 25


@dataclass(frozen=True)
class Hit:
    id: int
    email: str | None
    first_name: str | None
    last_name: str | None
    locale: str | None
    country: str | None
    created_at: datetime
    erased_at: datetime | None


def _upper(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _prefix(col, prefix: str) -> ColumnElement[bool]:
    # A range the index can scan, then an exact check of the first characters.
    return and_(col >= prefix, col < _upper(prefix), func.substr(col, 1, len(prefix)) == prefix)


def clean_query(query: str | None) -> str:
    """The search text, stripped and bounded; a clear error naming the field ``q``."""
    q = " ".join((query or "").split())
    if not q:
        raise ValidationError("q: type an e-mail address or a name (or the start of one)", field="q")
    if len(q) > QUERY_MAX_CHARS:
        raise ValidationError(f"q: at most {QUERY_MAX_CHARS} characters, got {len(q)}", field="q")
    if any(ord(c) < 32 for c in q):
        raise ValidationError("q: control characters are not allowed", field="q")
    return q


def search(session: Session, query: str, *, limit: int = RESULTS_DEFAULT_ROWS) -> list[Hit]:
    """Customers whose e-mail or name starts with ``query``, by e-mail, at most ``limit``."""
    q = clean_query(query).lower()
    limit = max(1, min(int(limit), RESULTS_MAX_ROWS))
    cols = (Customer.id, Customer.email, Customer.first_name, Customer.last_name, Customer.locale,
            Customer.country, Customer.created_at, Customer.erased_at)
    first, last = func.lower(Customer.first_name), func.lower(Customer.last_name)
    # (condition, the indexed key it ranges over): each scan reads its index in order and stops at the limit.
    wheres: list[tuple[ColumnElement[bool], ColumnElement]] = [(_prefix(Customer.email, q), Customer.email)]
    if "@" not in q:
        words = q.split(" ")
        if len(words) == 1:
            wheres += [(_prefix(first, q), first), (_prefix(last, q), last)]
        else:
            head, rest = words[0], " ".join(words[1:])
            # The index picks rows by the first word; the second narrows them.
            wheres += [(and_(_prefix(first, head), _prefix(last, rest)), first),
                       (and_(_prefix(last, head), _prefix(first, rest)), last)]
    hits: dict[int, Hit] = {}
    for where, key in wheres:
        # One LIMITed range scan per index, in index order (an OR of ranges, or ORDER BY id,
        # would make the planners read and sort every match of a short prefix).
        # email is unique, so it orders alone (adding id would make PostgreSQL sort every match).
        order = (key,) if key is Customer.email else (key, Customer.id)
        for row in session.execute(select(*cols).where(where).order_by(*order).limit(limit)):
            hits.setdefault(row.id, Hit(*row))
    return sorted(hits.values(), key=lambda h: (h.email or "", h.id))[:limit]


__all__ = ["search", "clean_query", "Hit", "QUERY_MAX_CHARS", "RESULTS_MAX_ROWS"]
