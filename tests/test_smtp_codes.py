"""The SMTP outcome table: every reply maps to retry / hard / soft / block / fail."""

from __future__ import annotations

import pytest

from mailer.errors import PermanentDeliveryError, TransientDeliveryError
from mailer.transport.smtp_codes import OUTCOMES, RECIPIENT, SENDER, classify, classify_dsn, error_for_reply


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
    (550, "5.2.1 mailbox disabled", "soft"),                            # disabled for now: counted
    (550, "5.2.1 The email account that you tried to reach is disabled.", "soft"),
    (550, "5.2.1 <ann@example.org>... User Unknown", "hard"),           # 5.2.1 with unknown-user words
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
    # Every pattern rule names a reply class, and the wording of a 4xx never makes it permanent
    assert all(r.basic in ("4", "5") for r in OUTCOMES if r.pattern)
    assert all(r.outcome == "retry" for r in OUTCOMES if r.pattern and r.basic == "4")
    # A sender-side row is never a bounce against the recipient
    assert not [r for r in OUTCOMES if r.side == SENDER and r.outcome in ("hard", "soft")]
    assert {r.side for r in OUTCOMES} == {SENDER, RECIPIENT, ""}


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


# Real-world replies (as relays and mailbox providers word them) and whose problem each is.
@pytest.mark.parametrize("code,reply,outcome,side,reason", [
    # -- our side: the message, our IP/domain, authentication, relaying, our sender, our rate
    (550, "5.7.1 [203.0.113.5] Our system has detected that this message is likely unsolicited mail. "
          "To reduce the amount of spam sent to Gmail, this message has been blocked.",
     "block", SENDER, "content refused as spam / policy"),
    (552, "5.3.4 Message size exceeds fixed limit", "fail", SENDER, "message too large"),
    (552, "5.2.3 Your message exceeded Google's message size limits.", "fail", SENDER, "message too large"),
    (552, "Message size exceeds fixed maximum message size", "fail", SENDER, "message too large"),
    (550, "5.7.606 Access denied, banned sending IP [203.0.113.5]", "block", SENDER,
     "sending IP or domain blocked"),
    (554, "5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org", "block",
     SENDER, "sending IP or domain blocked"),
    (554, "5.6.0 Message content rejected", "block", SENDER, "content refused as spam / policy"),
    (550, "5.6.1 Media not supported", "fail", SENDER, "message content refused"),
    (554, "5.2.0 STOREDRV.Deliver; message rejected as spam", "block", SENDER,
     "content refused as spam / policy"),
    (535, "5.7.8 Username and Password not accepted", "block", SENDER, "sender authentication failed"),
    (530, "5.7.0 Authentication Required", "block", SENDER, "sender authentication failed"),
    (535, "Authentication credentials invalid", "block", SENDER, "sender authentication failed"),
    (550, "5.7.26 This message does not pass authentication checks (SPF and DKIM both do not pass)",
     "block", SENDER, "sender authentication failed"),
    (554, "5.7.1 <bob@example.org>: Relay access denied", "block", SENDER, "relaying denied"),
    (550, "5.4.1 Relay Access Denied", "block", SENDER, "relaying denied"),
    (553, "5.1.7 The sender address <bounces+1@@example.com> is not a valid RFC-5321 address.",
     "block", SENDER, "our sender address syntax refused"),
    (553, "5.1.8 <bounces+1@example.com>: Sender address rejected: Domain not found", "block", SENDER,
     "our sender refused"),
    (550, "5.1.0 <bounces+1@example.com> sender rejected", "block", SENDER, "our sender refused"),
    (550, "5.7.27 Sender address has null MX", "block", SENDER, "our sender domain has a null MX"),
    (550, "5.7.1 Daily sending quota exceeded", "block", SENDER, "rate limited"),
    (421, "4.7.0 Try again later, closing connection. (EHLO)", "retry", SENDER,
     "deferred (rate / reputation)"),
    (421, "4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your IP address.",
     "retry", SENDER, "rate limited"),
    (451, "4.7.500 Server busy. Please try again later.", "retry", SENDER, "deferred (rate / reputation)"),
    (450, "4.7.1 Client host rejected: cannot find your hostname", "retry", SENDER,
     "sending IP or domain blocked"),
    (451, "Greylisted, please come back later", "retry", SENDER, "greylisted"),
    (421, "Too many connections from your IP", "retry", SENDER, "rate limited"),
    # -- the recipient's side
    (550, "5.1.1 The email account that you tried to reach does not exist. Please try double-checking "
          "the recipient's email address for typos or unnecessary spaces.", "hard", RECIPIENT, "user unknown"),
    (550, "5.1.1 <bob@example.org>: user unknown", "hard", RECIPIENT, "user unknown"),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281)", "hard", RECIPIENT, "user unknown"),
    (550, "5.5.0 Requested action not taken: mailbox unavailable", "hard", RECIPIENT, "user unknown"),
    (452, "4.2.2 The email account that you tried to reach is over quota.", "retry", RECIPIENT,
     "mailbox full (temporary)"),
    (452, "4.2.2 mailbox full", "retry", RECIPIENT, "mailbox full (temporary)"),
    (552, "5.2.2 The email account that you tried to reach is over quota.", "soft", RECIPIENT, "mailbox full"),
    (552, "Mailbox size limit exceeded", "soft", RECIPIENT, "exceeded storage allocation"),
])
def test_real_world_replies_say_whose_problem_they_are(code, reply, outcome, side, reason):
    # Given a reply as a relay words it; When it is classified
    result = classify(code, reply)
    # Then the outcome, the side and the reason are the table's
    assert (result.outcome, result.side, result.reason) == (outcome, side, reason)
    assert result.sender_side is (side == SENDER)


@pytest.mark.parametrize("status,diagnostic", [
    ("5.7.1", "smtp; 550 5.7.1 This message is likely unsolicited mail"),
    ("5.3.4", "smtp; 552 5.3.4 Message size exceeds fixed limit"),
    ("4.7.0", "smtp; 421 4.7.0 Try again later, closing connection"),
])
def test_a_dsn_about_us_is_sender_side_too(status, diagnostic):
    assert classify_dsn(status, diagnostic).side == SENDER


def test_the_error_a_transport_raises_carries_the_side_and_the_relay():
    err = error_for_reply(552, "5.3.4 Message size exceeds fixed limit", relay="smtp://relay:25")
    assert isinstance(err, PermanentDeliveryError)
    assert (err.outcome, err.side, err.relay, err.enhanced) == ("fail", SENDER, "smtp://relay:25", "5.3.4")
