"""Every exception mailer raises on purpose, in one tree.

::

    MailerError
     ├── ConfigurationError          bad setting or missing file
     ├── ValidationError             bad input from a person or a service (``field``, ``problems``)
     │    ├── InvalidData            data breaks a size/shape limit (mailer.limits)
     │    ├── InvalidAddress         an e-mail address failed validation
     │    ├── HeaderInjection        a control character or unencodable text in a header
     │    ├── UnknownKind            no such notice kind / template
     │    ├── MissingField           required data field absent
     │    ├── InvalidEvent           shop event does not match its schema
     │    ├── SegmentError           segment file invalid
     │    └── TemplateTextError      user-supplied template text (subject...) refused
     ├── TemplateError               MJML or Jinja problem (names file, locale, line)
     ├── TokenError                  forged, tampered or expired token
     ├── ConsentError                consent ledger problem
     │    └── ChainBroken            hash chain verification failed
     ├── NotFound                    a referenced row does not exist
     ├── InvalidState                operation not allowed in the current state
     ├── PoolExhausted               reward-code pool has no free code
     ├── NoBroker                    no Dramatiq broker set up in this process
     ├── FormatError                 a template filter cannot format a value (also a ValueError)
     └── DeliveryError               sending a message failed (``code``, ``outcome``, ``side``, ...)
          ├── TransientDeliveryError retry later (4xx, connection trouble)
          │    ├── RateLimited       no rate-limit token within the allowed wait
          │    └── LeaseHeld         another worker holds a live lease on the delivery
          └── PermanentDeliveryError do not retry (5xx)
               └── SMTPUTF8Unsupported   the address needs SMTPUTF8 and no relay offers it

Each class has a one-line docstring; ``str(error)`` is the message a person reads. Every
attribute code reads off an error is declared here, as a typed ``__init__`` parameter,
never set onto an instance after it is made.

Private control-flow exceptions local to one module (``_Bad`` in customers.records,
``_Lost`` in campaigns.fanout, ``_Duplicate`` in automations.publish) subclass
:class:`ControlFlow` so that nothing outside their module mistakes them for a real
error. ``mailer.web.security._BodyTooLarge`` is the one exception outside this tree: it
is a Starlette ``HTTPException`` (the 413 response itself), and this module sits on the
ground floor, below every framework.
"""

from __future__ import annotations


class MailerError(Exception):
    """Base of every mailer error."""


class ConfigurationError(MailerError):
    """A setting or a required file is wrong or missing."""


class ControlFlow(Exception):
    """Base of the private exceptions a module raises and catches itself; never escapes it."""


#: One (field path, message) pair of a ValidationError's ``problems``.
Problem = tuple[str, str]


class ValidationError(MailerError):
    """Input from a person or another service is invalid.

    ``field`` names the bad field (``data.items[3].name``, ``PATH``); ``problems`` lists
    every (field, message) pair when there is more than one, so a 422 names them all.
    """

    field: str | None
    problems: list[Problem]

    def __init__(self, message: str, *, field: str | None = None, problems: list[Problem] | None = None,
                 where: str | None = None):
        # ``where`` names the file (or file and line) when there is no field: the CLI and
        # the console print ``field`` beside the message, so the file is never lost.
        super().__init__(message)
        self.field = field if field is not None else where
        self.problems = list(problems) if problems else []

    @classmethod
    def listing(cls, problems: list[Problem]):
        """One error for all ``problems`` (non-empty): its message and field are the first one's."""
        first_field, first_msg = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return cls(first_msg + more, field=first_field, problems=problems)


class InvalidData(ValidationError):
    """Data breaks one or more size or shape limits; ``problems`` lists (field, message) pairs."""


class InvalidAddress(ValidationError):
    """An e-mail address failed validation."""


class HeaderInjection(ValidationError):
    """Header text contains a control character (after line breaks are flattened) or cannot be encoded."""


class UnknownKind(ValidationError):
    """No notice kind or template has that name."""


class MissingField(ValidationError):
    """A required data field is absent."""


class InvalidEvent(ValidationError):
    """A shop event does not match its declared schema."""


class SegmentError(ValidationError):
    """A segment definition is invalid."""


class TemplateTextError(ValidationError):
    """User-supplied template text (a subject or preheader) is refused; ``field`` names it (``subject[pl]``)."""


class TemplateError(MailerError):
    """An MJML or Jinja template failed to compile or render."""

    def __init__(self, message: str, *, template: str | None = None, locale: str | None = None,
                 line: int | None = None, field: str | None = None):
        parts = [p for p in (template, f"locale {locale}" if locale else None,
                             f"line {line}" if line else None,
                             f"field {field!r}" if field else None) if p]
        super().__init__(f"{': '.join([', '.join(parts), message]) if parts else message}")
        self.template = template
        self.locale = locale
        self.line = line
        self.field = field


class TokenError(MailerError):
    """A token is forged, tampered with or expired."""


class ConsentError(MailerError):
    """The consent ledger refused an operation."""


class ChainBroken(ConsentError):
    """The consent hash chain does not verify."""

    def __init__(self, message: str, *, event_id: int | None = None, position: int | None = None):
        super().__init__(message)
        self.event_id = event_id
        self.position = position


class Busy(MailerError):
    """A lock could not be taken in time (another session holds it); nothing was changed: retry.

    ``retry_after_s`` is how long to wait first (HTTP answers 503 with ``Retry-After``).
    """

    retry_after_s: int

    def __init__(self, message: str, *, retry_after_s: int = 5):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(MailerError):
    """A referenced row does not exist."""


class InvalidState(MailerError):
    """The operation is not allowed in the object's current state."""


class LoginFailed(MailerError):
    """A console login refused: unknown address, wrong password or code, disabled account (one message for all)."""


class LoginThrottled(MailerError):
    """Too many console login attempts for this account or from this IP; try again later."""


class SecondFactorRequired(LoginFailed):
    """The password was right and the account has TOTP: the code is needed (or was wrong)."""


class PoolExhausted(MailerError):
    """A reward-code pool has no free code left."""


class NoBroker(MailerError):
    """No broker is configured in this process (call mailer.queue.broker.setup first)."""


class FormatError(MailerError, ValueError):
    """A value handed to a formatting filter cannot be formatted (names the value)."""


class DeliveryError(MailerError):
    """Sending a message failed.

    ``code``/``enhanced``/``reply``: the SMTP reply, when there was one. ``outcome`` and
    ``reason``: the reply table's verdict (``hard``, ``soft``, ``block``, ``fail``, ``retry``;
    ``None`` when nothing classified it). ``side``: ``sender`` when the refusal is about
    us, not the recipient. ``relay``: the relay that refused. ``maybe_sent``: the connection
    broke during DATA, so the relay may have accepted the message.
    """

    code: int | None
    enhanced: str | None
    reply: str
    outcome: str | None
    reason: str | None
    side: str
    relay: str
    maybe_sent: bool

    def __init__(self, message: str, *, code: int | None = None, enhanced: str | None = None,
                 reply: str | None = None, outcome: str | None = None, reason: str | None = None,
                 side: str = "", relay: str = "", maybe_sent: bool = False):
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced
        self.reply = reply if reply is not None else message
        self.outcome = outcome
        self.reason = reason
        self.side = side
        self.relay = relay
        self.maybe_sent = maybe_sent


class TransientDeliveryError(DeliveryError):
    """Delivery failed for now; retry later."""


class RateLimited(TransientDeliveryError):
    """No rate-limit token within the allowed wait; retry the delivery later."""


class LeaseHeld(TransientDeliveryError):
    """Another worker holds a live lease on this delivery; try again after it expires."""


class PermanentDeliveryError(DeliveryError):
    """Delivery failed for good; do not retry."""


class SMTPUTF8Unsupported(PermanentDeliveryError):
    """The recipient address needs SMTPUTF8 and the relay does not offer it (``outcome`` is ``fail``)."""

    def __init__(self, message: str, *, reply: str | None = None, code: int | None = None):
        super().__init__(message, code=code, reply=reply, outcome="fail")
