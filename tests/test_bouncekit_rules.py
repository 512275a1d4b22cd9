"""Decision rules of mailer.bouncekit that the corpus figures rest on, one case each:
"user unknown" at RCPT vs after the content, sender-side wording inside a recipient reply,
connect-stage refusals, complaints without ARF, Exim's failed-address list."""

from __future__ import annotations

from mailer.bouncekit import classify
from mailer.bouncekit.classify import decide


def test_user_unknown_after_data_without_code_is_filtered():
    """Given "550 User unknown" in reply to end of DATA and no x.1.x code
    When decided
    Then it is filtered (the mailbox was accepted at RCPT), a soft bounce, not a suppression."""
    r = decide("550 <a@example.org>: User unknown", "(in reply to end of DATA command)", "5.0.0")
    assert (r.reason, r.action) == ("filtered", "soft")


def test_user_unknown_at_rcpt_is_userunknown():
    """Given Postfix's "Recipient address rejected: User unknown" (only said at RCPT)
    Then the address is unknown and suppressed."""
    r = decide("550 <a@example.org>: Recipient address rejected: User unknown in local recipient table",
               "", "5.0.0")
    assert (r.reason, r.action) == ("userunknown", "suppress")


def test_sender_side_wording_in_a_recipient_reply_wins():
    """Given "Recipient address rejected: Policy violation"
    Then it is policyviolation (ours), nobody is suppressed."""
    r = decide("550 5.7.0 <a@example.org>: Recipient address rejected: Policy violation", "", "5.7.0")
    assert (r.reason, r.action) == ("policyviolation", "sender")


def test_refusal_at_initial_connection_is_blocked():
    """Given an Exim refusal "after initial connection" whose text mentions a quota
    Then it is blocked (our host), never a full mailbox."""
    ctx = "SMTP error from remote mail server after initial connection:\n554 You've reached your daily relay quota"
    r = decide("", ctx, "")
    assert (r.reason, r.action) == ("blocked", "sender")


def test_apple_unsubscribe_is_an_opt_out_complaint():
    """Given Apple Mail's unsubscribe message (X-Apple-Unsubscribe: true, auto-replied)
    Then it is a complaint of type opt-out from the sender, not a vacation reply."""
    raw = (b"From: ann@icloud.example\r\nTo: opt-out-1@shop.example\r\nSubject: unsubscribe\r\n"
           b"Auto-Submitted: auto-replied\r\nX-Apple-Unsubscribe: true\r\n\r\nApple Mail sent this.\r\n")
    rep = classify(raw)
    assert (rep.type, rep.feedback_type, [r.address for r in rep.recipients]) == (
        "complaint", "opt-out", ["ann@icloud.example"])


def test_exim_failed_list_names_the_recipient_even_if_it_is_the_bounce_to():
    """Given an Exim bounce whose failed address equals the bounce's To
    Then that address is still reported as the failed recipient."""
    raw = (b"From: Mail Delivery System <mailer-daemon@mx.example>\r\nTo: ann@example.org\r\n"
           b"Subject: Mail delivery failed: returning message to sender\r\n\r\n"
           b"This is a permanent error. The following address(es) failed:\r\n\r\n"
           b"  ann@example.org\r\n    SMTP error from remote mail server after RCPT TO:<ann@example.org>:\r\n"
           b"    550 5.1.1 User unknown\r\n")
    rep = classify(raw)
    assert [(r.address, r.reason) for r in rep.recipients] == [("ann@example.org", "userunknown")]
