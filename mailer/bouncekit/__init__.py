"""bouncekit: reading bounces, complaints and auto-replies as they really arrive.

A pure package (stdlib and ``email`` only, no database, nothing from the rest of mailer):
:mod:`.reasons` holds the reason taxonomy and pattern tables as data, :mod:`.parse` walks
the MIME structure and collects evidence, :mod:`.classify` decides type, recipients,
reasons and actions.  ``classify(raw)`` is the entry point.
"""

from mailer.bouncekit.classify import Recipient, Report, classify
from mailer.bouncekit.parse import read_sources
from mailer.bouncekit.reasons import ACTIONS, REASONS, SENDER_SIDE, action_for

__all__ = ["ACTIONS", "REASONS", "SENDER_SIDE", "Recipient", "Report", "action_for", "classify", "read_sources"]
