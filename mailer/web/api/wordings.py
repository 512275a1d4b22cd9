"""``GET /v1/wordings/{id}?locale=``: the text and version a shop displays next to a consent checkbox.

Scope ``consents``.  Reading a wording registers its current versions (text and SHA-256,
:mod:`mailer.consent.wordings`), so the words a shop shows are on record before anyone
agrees to them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from mailer.consent import wordings
from mailer.models import ApiKey
from mailer.rendering import i18n
from mailer.web.deps import Problem, get_mailer, require_scope

router = APIRouter()


class WordingOut(BaseModel):
    wording_id: str
    locale: str
    version: str
    text: str
    sha256: str


@router.get("/v1/wordings/{wording_id}", tags=["consents"], response_model=WordingOut,
            responses={401: {"model": Problem}, 403: {"model": Problem, "description": "Lacks the consents scope."},
                       404: {"model": Problem, "description": "No such wording."}, 422: {"model": Problem}})
def get_wording(wording_id: Annotated[str, Path(max_length=wordings.MAX_WORDING_ID_CHARS,
                                                pattern=wordings.WORDING_ID_PATTERN)],
                request: Request, _key: Annotated[ApiKey, Depends(require_scope("consents"))],
                locale: Annotated[str | None, Query(max_length=i18n.MAX_LOCALE_CHARS,
                                                    pattern=i18n.LOCALE_PATTERN)] = None) -> WordingOut:
    """The current version for ``locale`` (its fallback chain, then the default locale): show this text, send
    back its ``wording_id`` and ``version`` with the grant."""
    m = get_mailer(request)
    with m.session() as s:
        v = wordings.current(s, m.settings, wording_id, locale)
    return WordingOut(wording_id=v.wording_id, locale=v.locale, version=v.version, text=v.text, sha256=v.sha256)
