"""Automations: rules read from ``automations/*.toml`` that turn shop events into notices.

One file is one rule; it says which event triggers it, conditions on the event and
the customer, which notice kind to send, after which delays, what it is about (its
*group*), and which events cancel it (see docs/automations.md for every key).  This
package loads and checks the rules and, for each published event
(:func:`handle`, called by :func:`mailer.events.publish` inside its transaction):

1. **cancels** pending sends of every rule that lists the event in ``cancelled_by``:
   one ``UPDATE deliveries SET status='cancelled' WHERE automation=? AND
   cancel_group=? AND status='scheduled'``.  The send path claims a scheduled row only
   while it is still ``scheduled``, so a cancellation that commits first always wins;
2. **triggers** every rule whose ``event`` it is and whose conditions hold: each send
   is a ``deliveries`` row, ``queued`` when due now or ``scheduled`` with
   ``send_after``, so a worker restart loses nothing (the sweeper wakes due rows) and
   a send happens once (the claim is a conditional UPDATE);
3. **deduplicates** (``once``: at most one mail per group ever; ``[repeat]``: nothing
   again within a window unless some fields changed), **merges** (``[merge]``: a second
   event joins a still-pending mail of the same group instead of sending another),
   **throttles** fan-outs in **waves**, claims **reward codes** from a pool
   (:mod:`mailer.codes`), and defers marketing mail out of **quiet hours**.

On PostgreSQL, rows of one group are changed under a transaction-scoped advisory lock
on (rule, group), so two events about the same thing cannot both decide "nothing was
sent yet"; SQLite has one writer at a time anyway.

Which module holds what (each imports only those above it):

* :mod:`~mailer.automations.rules`: the rule files: :class:`Rule` and its ``Repeat``,
  ``Merge``, ``Waves``, ``Reward`` tables, :func:`parse_rule` and its checks, durations,
  ``RULE_KEYS`` / ``ADD_DATA``, and the cached :func:`load` / :func:`get`;
* :mod:`~mailer.automations.conditions`: :func:`event_matches`, :func:`customer_matches`
  and quiet hours (:func:`parse_quiet_hours`, :func:`out_of_quiet_hours`, time zones);
* :mod:`~mailer.automations.sends`: storing one send: the per-event context, the
  (rule, group) advisory lock, idempotency keys, the notice's data, the consent and
  suppression check, the reward-code claim, and the ``deliveries`` row (or a ``failed``
  row when a pool ran out);
* :mod:`~mailer.automations.restock`: the restock-request audience, :func:`wave_plan`,
  the fan-out and ``[merge]`` into a pending mail;
* :mod:`~mailer.automations.engine`: handling one event: :func:`handle` (cancellations
  via :func:`cancel_group`, then triggers with ``once`` / ``[repeat]``) and, after the
  commit, :func:`wake`;
* :mod:`~mailer.automations.views`: :class:`Pending` and :func:`pending`, the scheduled
  sends still waiting;
* :mod:`~mailer.automations.hooks`: :func:`release_codes_hook`, registered in
  :data:`mailer.sweeper.HOOKS` when this package is imported (:mod:`mailer.actors`
  imports it for that).
"""

from mailer.automations.conditions import customer_matches, event_matches, out_of_quiet_hours, parse_quiet_hours
from mailer.automations.engine import FAST_PATH_MAX_DELAY_S, cancel_group, handle, wake

# Last, as the single module did at its end: importing registers the sweeper hook (once).
from mailer.automations.hooks import RELEASE_INTERVAL_S, release_codes_hook
from mailer.automations.restock import AUDIENCE_BATCH, wave_plan
from mailer.automations.rules import (
    ADD_DATA,
    AUDIENCES,
    EVENT_OPS,
    RULE_KEYS,
    Merge,
    Repeat,
    Reward,
    Rule,
    Waves,
    describe,
    format_duration,
    get,
    load,
    load_each,
    parse_duration,
    parse_rule,
)
from mailer.automations.sends import KEY_MAX_CHARS, LOCK_CLASS
from mailer.automations.views import Pending, cancel_pending, pending

__all__ = [
    # rules
    "ADD_DATA", "AUDIENCES", "EVENT_OPS", "RULE_KEYS", "Merge", "Repeat", "Reward", "Rule", "Waves",
    "describe", "format_duration", "get", "load", "load_each", "parse_duration", "parse_rule",
    # conditions
    "customer_matches", "event_matches", "out_of_quiet_hours", "parse_quiet_hours",
    # sends
    "KEY_MAX_CHARS", "LOCK_CLASS",
    # restock
    "AUDIENCE_BATCH", "wave_plan",
    # engine
    "FAST_PATH_MAX_DELAY_S", "cancel_group", "handle", "wake",
    # views
    "Pending", "pending", "cancel_pending",
    # hooks
    "RELEASE_INTERVAL_S", "release_codes_hook",
]
