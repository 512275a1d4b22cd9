"""Decision rules of mailer.bouncekit that the corpus figures rest on, one case each:
"user unknown" at RCPT vs after the content, sender-side wording inside a recipient reply,
connect-stage refusals, complaints without ARF, Exim's failed-address list."""

from __future__ import annotations

import json

import pytest

from mailer.bouncekit import classify
from mailer.bouncekit.classify import decide
from tests.bounce_support import arf, dsn


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


@pytest.mark.parametrize("feedback_type", ["abuse", "fraud", "opt-out", "not-spam", "auth-failure", "virus"])
def test_every_arf_feedback_type_is_recognized_with_its_type(feedback_type):
    """Given an ARF report of each RFC 5965 feedback type
    When classified
    Then it is a complaint carrying that type (what each does is decided by ingest)."""
    rep = classify(arf(to="fbl@shop.example", message_id="<1.abc@shop.example>", recipient="ann@example.org",
                       feedback_type=feedback_type))
    assert (rep.type, rep.feedback_type, [r.address for r in rep.recipients]) == (
        "complaint", feedback_type, ["ann@example.org"])


@pytest.mark.parametrize(("diagnostic", "reason", "action"), [
    # Gmail's documented wording: the account is disabled, which may pass (counted)
    ("550 5.2.1 The email account that you tried to reach is disabled.", "suspend", "soft"),
    # the bare code means "mailbox disabled" (RFC 3463)
    ("550 5.2.1 Requested action not taken", "suspend", "soft"),
    # many servers send 5.2.1 with "User unknown" at RCPT: the mailbox does not exist
    ("550 5.2.1 <ann@example.org>... User Unknown (in reply to RCPT TO command)", "userunknown", "suppress"),
    # and Gmail's rate refusal carries 5.2.1 too: ours
    ("550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
     "messages from being delivered.", "speeding", "sender"),
])
def test_5_2_1_is_decided_by_its_words(diagnostic, reason, action):
    """Given a 5.2.1 refusal, When decided, Then its wording decides between suspend, userunknown
    and a sender-side rate refusal; the code alone is suspend (soft)."""
    r = decide(diagnostic, "", "5.2.1", action_field="failed")
    assert (r.reason, r.action) == (reason, action)


def test_a_multi_line_reply_is_read_as_one_sentence():
    """Given Gmail's multi-line reply, each line prefixed with "550-5.7.1", in a Sendmail transcript
    When decided
    Then the words across the line breaks are read together: authfailure, not spamdetected."""
    ctx = ("<<< 550-5.7.1 This message does not have authentication information or fails to pass\n"
           "<<< 550-5.7.1 authentication checks. To best protect our users from spam, the\n"
           "<<< 550 5.7.1 message has been blocked.\n")
    r = decide("550-5.7.1 This message does not have authentication information or fails to pass", ctx, "5.7.1")
    assert (r.reason, r.action) == ("authfailure", "sender")


def test_the_words_after_recipient_address_rejected_win():
    """Given Postfix's generic prefix followed by a specific cause, Then the cause decides."""
    r = decide("554 5.3.0 <a@example.org>: Recipient address rejected: Mailer error", "", "5.3.0")
    assert r.reason == "mailererror"
    r = decide("550 5.7.1 <a@example.org>: Recipient address rejected: User a@example.org temporary locked",
               "", "5.7.1")
    assert (r.reason, r.action) == ("suspend", "soft")


def test_a_local_delivery_program_failure_is_mailererror_unless_it_names_the_mailbox():
    """Given X-Unix diagnostics (procmail, a pipe), Then the program's failure is mailererror,
    but "Disk quota exceeded" from it is still a full mailbox."""
    assert decide("procmail: Lock failure on mailbox.lock", "", "5.2.0", diagnostic_type="x-unix").reason \
        == "mailererror"
    assert decide("maildir delivery failed: Disk quota exceeded", "", "4.3.0", diagnostic_type="x-unix").reason \
        == "mailboxfull"


@pytest.mark.parametrize(("reply", "reason"), [
    ("550 5.2.0 Mail rejete. Mail rejected. ofr_506 [506]", "spamdetected"),
    ("550 5.5.0 Adresse destinataire invalide. Invalid recipient. LPN007_416", "userunknown"),
    ("421 mwinf5c77 ME Service refuse. Veuillez essayer plus tard. OFR_999 [999]", "blocked"),
])
def test_orange_codes_name_the_cause(reply, reason):
    """Given Orange / La Poste refusals, whose words say little, Then their numbered code decides."""
    assert decide(reply, "", "").reason == reason


def test_ses_notification_wrapped_in_sns_mail_is_read():
    """Given an SES bounce delivered as an SNS e-mail notification (the SES JSON is a string in
    "Message"), Then the bounced recipient and reason are read."""
    inner = json.dumps({"notificationType": "Bounce", "bounce": {
        "bounceType": "Permanent", "bounceSubType": "General",
        "bouncedRecipients": [{"emailAddress": "ann@example.org", "status": "5.1.1",
                               "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"headers": [{"name": "Message-ID", "value": "<7.abc@shop.example>"}]}})
    body = json.dumps({"Type": "Notification", "MessageId": "x", "Message": inner})
    raw = ("From: SES <no-reply@sns.amazonaws.com>\r\nTo: ops@shop.example\r\nSubject: AWS Notification Message\r\n"
           "\r\n" + body + "\r\n").encode()
    rep = classify(raw)
    assert (rep.type, rep.message_id, [(r.address, r.reason) for r in rep.recipients]) == (
        "bounce", "<7.abc@shop.example>", [("ann@example.org", "userunknown")])


def test_the_delivery_header_is_handed_on_for_verification():
    """Given a DSN whose original carries X-Mailer-Delivery "42.<HMAC>"
    Then the report names delivery 42 and keeps the header value for the caller to verify
    (bouncekit holds no keys), and explain's JSON does not print it."""
    rep = classify(dsn(to="postmaster@shop.example", message_id=None, recipient="ann@example.org",
                       delivery_header="42.0123456789abcdef"))
    assert (rep.delivery_id, rep.delivery_header) == (42, "42.0123456789abcdef")
    assert "delivery_header" not in rep.to_dict()
