"""A submission of a public sign-up or restock form: abuse limits, then the double opt-in mail.

What it guards (docs/forms.md):

* a filled honeypot field answers like a success and stores nothing;
* per client IP (``MAILER_SIGNUP_IP_PER_MINUTE``) and per address
  (``MAILER_SIGNUP_ADDRESS_PER_HOUR``) budgets on the shared rate limiter
  (:func:`mailer.transport.ratelimit.limiter_for`: Redis, so they hold across processes);
  an IP over budget is told so (it learns nothing about any address); an address over
  budget answers like a success and does nothing;
* consent is never granted here: a pending request is stored and the confirmation mailed
  (:mod:`mailer.notices.confirmation`); the same address again within ten minutes reuses
  the pending request and sends no second mail (:data:`mailer.consent.ledger.CONFIRM_RESEND_MIN_S`);
* the outcome is the same whether the address was unknown, pending or already subscribed.

The wording stored as proof is the exact text of the form's wording version in the
locale the page was shown in (the hosted page sends that locale back).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from mailer.addresses import normalize
from mailer.consent import forms, ledger, wordings
from mailer.errors import InvalidAddress, MailerError
from mailer.instance_secrets import address_hash_salt
from mailer.limits import InvalidData
from mailer.models import ConsentRequest, ConsentSource
from mailer.notices.confirmation import send_confirmation
from mailer.rendering import i18n
from mailer.transport.ratelimit import limiter_for

log = logging.getLogger("mailer.signups")

#: The per-IP budget's window, milliseconds.
IP_WINDOW_MS = 60_000
#: The per-address budget's window, milliseconds.
ADDRESS_WINDOW_MS = 3_600_000
#: Longest first name accepted, characters (customers.first_name holds 200).
MAX_FIRST_NAME_CHARS = 100
#: Longest address accepted, characters.
MAX_EMAIL_CHARS = 320
#: Longest user agent kept as proof, characters (longer ones are cut).
MAX_USER_AGENT_CHARS = 1000


class SignupRateLimited(MailerError):
    """Too many sign-ups from one client IP; try again in a minute."""


@dataclass(frozen=True)
class Submission:
    """What a browser posted to a form (as text, unchecked)."""

    email: str | None
    first_name: str | None = None
    locale: str | None = None
    sku: str | None = None
    honeypot: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class SignupResult:
    #: "accepted" (a confirmation was requested, or one is pending, or consent is current)
    #: or "ignored" (honeypot, address over budget): the answer to the browser is the same.
    status: str
    #: Confirmation mails enqueued by this submission (0 when one was already pending).
    mails: int = 0


def _control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check(form: forms.Form, sub: Submission) -> tuple[str, list[tuple[str, str]]]:
    """The normalized address and every problem of a submission, as (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    address = ""
    if not sub.email:
        problems.append(("email", "enter your e-mail address"))
    elif len(sub.email) > MAX_EMAIL_CHARS:
        problems.append(("email", f"longer than {MAX_EMAIL_CHARS} characters"))
    else:
        try:
            address = normalize(sub.email)
        except InvalidAddress as exc:
            problems.append(("email", str(exc)))
    if sub.first_name:
        if "first_name" not in form.fields:
            problems.append(("first_name", "this form does not ask for a first name"))
        elif len(sub.first_name) > MAX_FIRST_NAME_CHARS or _control(sub.first_name):
            problems.append(("first_name", f"at most {MAX_FIRST_NAME_CHARS} characters, one line"))
    if sub.locale and not i18n.is_valid_locale(sub.locale):
        problems.append(("locale", "not a locale tag such as en, pl or zh-TW"))
    if form.kind == "restock":
        if not sub.sku:
            problems.append(("sku", "a restock form needs the product's sku"))
        elif not forms.valid_sku(sub.sku):
            problems.append(("sku", "1-100 characters without spaces, ':', braces, quotes or '<>&'"))
    elif sub.sku:
        problems.append(("sku", "only restock forms take a sku"))
    return address, problems


def _address_key(app, address: str) -> str:
    # Hashed with the instance's salt: Redis never holds the address itself.
    digest = hashlib.sha256(address_hash_salt(app.settings) + address.encode("utf-8")).hexdigest()
    return f"signup:address:{digest[:32]}"


def submit(app, form: forms.Form, sub: Submission) -> SignupResult:
    """Handle one submission; InvalidData (422) for bad fields, SignupRateLimited for an IP over budget."""
    if sub.honeypot:
        log.info("form %s: honeypot filled; nothing stored", form.form_id)
        return SignupResult("ignored")
    address, problems = check(form, sub)
    if problems:
        raise InvalidData.listing(problems)
    settings = app.settings
    limiter = limiter_for(settings)
    if not limiter.try_acquire(f"signup:ip:{sub.ip or 'unknown'}", settings.signup_ip_per_minute,
                               bucket_ms=IP_WINDOW_MS):
        raise SignupRateLimited("too many sign-ups from your network; try again in a minute")
    if not limiter.try_acquire(_address_key(app, address), settings.signup_address_per_hour,
                               bucket_ms=ADDRESS_WINDOW_MS):
        log.info("form %s: address over its hourly budget; answered as usual, nothing sent", form.form_id)
        return SignupResult("ignored")
    pending: list[ledger.PendingConfirmation] = []
    with app.session() as s:
        wording = None
        if form.wording_id is not None:
            wording = wordings.resolve(s, settings, form.wording_id, form.wording_version, sub.locale)
        proof = ledger.Proof(ip=sub.ip, user_agent=(sub.user_agent or "")[:MAX_USER_AGENT_CHARS] or None,
                             form_id=form.form_id, wording=wording.text if wording else None,
                             wording_version=wording.version if wording else None)
        for purpose in form.purposes_for(sub.sku):
            p = ledger.request_double_opt_in(s, settings, purpose=purpose, source=ConsentSource.signup_form,
                                             email=address, proof=proof, locale=sub.locale or None)
            if p.created and sub.first_name:
                request = s.get(ConsentRequest, p.request_id)
                request.proof = dict(request.proof or {}) | {"first_name": sub.first_name.strip()}
            pending.append(p)
        # One mail for the whole sign-up: a form with several purposes stores one request
        # per purpose (each its own proof) and one link that confirms them all.
        link = ledger.combine(s, settings, pending)
    mails = 1 if link is not None and send_confirmation(app, link) is not None else 0
    return SignupResult("accepted", mails)
