"""The SMTP outcome table: every reply maps to retry / hard / soft / block / fail."""

from __future__ import annotations

import pytest

from mailer.errors import PermanentDeliveryError, TransientDeliveryError
from mailer.smtp_codes import OUTCOMES, classify, classify_dsn, error_for_reply


@pytest.mark.parametrize("code,reply,outcome", [
    (None, "", "retry"),                                               # connection refused / reset
    (421, "4.3.2 Service shutting down", "retry"),
    (450, "4.2.1 Mailbox temporarily disabled", "retry"),
    (451, "4.3.0 try again later", "retry"),
    (452, "4.2.2 Mailbox full, try later", "retry"),
    (451, "4.7.1 Greylisted, please retry", "retry"),
    (450, "4.1.1 user unknown (temporarily)", "retry"),                # a 4xx is never permanent
    (550, "5.1.1 <x@example.com>: user unknown", "hard"),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; null MX", "hard"),
    (553, "5.1.3 bad address syntax", "hard"),
    (550, "5.2.1 mailbox disabled", "hard"),
    (550, "No such user here", "hard"),                                 # wording without enhanced code
    (550, "5.0.0 Requested action not taken: mailbox unavailable", "hard"),
    (552, "5.2.2 Mailbox full", "soft"),
    (550, "5.0.0 Mailbox over quota", "soft"),
    (552, "Requested mail action aborted: exceeded storage allocation", "soft"),
    (554, "5.7.1 Message rejected as spam", "block"),
    (550, "5.7.26 Unauthenticated email is not accepted (DMARC)", "block"),
    (550, "5.7.606 Access denied, banned sending IP", "block"),
    (553, "5.1.8 <bounces+1@example.com>: Sender address rejected: Domain not found", "block"),
    (550, "Sender address rejected: not verified", "block"),
    (554, "Your IP is on a block list", "block"),
    (552, "5.3.4 Message size exceeds fixed limit", "fail"),
    (553, "5.6.7 SMTPUTF8 not supported", "fail"),
    (554, "Transaction failed", "fail"),
    (599, "something odd", "fail"),
])
def test_replies_map_to_outcomes(code, reply, outcome):
    assert classify(code, reply).outcome == outcome


def test_enhanced_code_is_taken_only_when_its_class_agrees_with_the_reply_code():
    # "250 2.0.0" in the text of a 550 must not make it look like 2.x.x
    result = classify(550, "5.1.1 user unknown (was 2.0.0 earlier)")
    assert result.enhanced == "5.1.1"
    assert classify(451, "5.1.1 odd server").enhanced is None
    assert classify(451, "5.1.1 odd server").outcome == "retry"


def test_the_table_is_data_each_rule_names_a_known_outcome_and_a_reason():
    assert {r.outcome for r in OUTCOMES} == {"retry", "hard", "soft", "block", "fail"}
    assert all(r.reason for r in OUTCOMES)
    # Every pattern rule is restricted to 5xx replies
    assert all(r.basic == "5" for r in OUTCOMES if r.pattern)


@pytest.mark.parametrize("status,diagnostic,outcome", [
    ("5.1.1", "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown", "hard"),
    ("5.2.2", "smtp; 552 5.2.2 Mailbox full", "soft"),
    ("5.0.0", "smtp; 550 mailbox over quota", "soft"),
    ("5.7.1", "smtp; 554 5.7.1 rejected as spam", "block"),
    ("4.4.7", "", "retry"),
    ("5.1.1", "", "hard"),
])
def test_dsn_status_and_diagnostic_use_the_same_table(status, diagnostic, outcome):
    assert classify_dsn(status, diagnostic).outcome == outcome


def test_transports_raise_transient_or_permanent_errors_keeping_the_raw_reply():
    err = error_for_reply(451, "4.3.0 try again later", relay="smtp://relay:25")
    assert isinstance(err, TransientDeliveryError) and err.reply == "451 4.3.0 try again later"
    err = error_for_reply(550, "5.1.1 user unknown")
    assert isinstance(err, PermanentDeliveryError)
    assert (err.outcome, err.enhanced, err.code, err.reply) == ("hard", "5.1.1", 550, "550 5.1.1 user unknown")
