"""Every exception mailer raises on purpose, in one tree.

::

    MailerError
     ├── ConfigurationError          bad setting or missing file
     ├── ValidationError             bad input from a person or a service
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
     └── DeliveryError               sending a message failed
          ├── TransientDeliveryError retry later (4xx, connection trouble)
          └── PermanentDeliveryError do not retry (5xx)
               └── SMTPUTF8Unsupported   the address needs SMTPUTF8 and no relay offers it

Each class has a one-line docstring; ``str(error)`` is the message a person reads.
"""

from __future__ import annotations


class MailerError(Exception):
    """Base of every mailer error."""


class ConfigurationError(MailerError):
    """A setting or a required file is wrong or missing."""


class ValidationError(MailerError):
    """Input from a person or another service is invalid."""

    def __init__(self, message: str, *, field: str | None = None, where: str | None = None):
        super().__init__(message)
        self.field = field
        self.where = where


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


class NotFound(MailerError):
    """A referenced row does not exist."""


class InvalidState(MailerError):
    """The operation is not allowed in the object's current state."""


class PoolExhausted(MailerError):
    """A reward-code pool has no free code left."""


class DeliveryError(MailerError):
    """Sending a message failed."""

    def __init__(self, message: str, *, code: int | None = None, enhanced: str | None = None,
                 reply: str | None = None):
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced
        self.reply = reply if reply is not None else message


class TransientDeliveryError(DeliveryError):
    """Delivery failed for now; retry later."""


class PermanentDeliveryError(DeliveryError):
    """Delivery failed for good; do not retry."""


class SMTPUTF8Unsupported(PermanentDeliveryError):
    """The recipient address needs SMTPUTF8 and the relay does not offer it."""
