"""Live SMTP replies (mailer.transport.smtp_codes) and later bounces (mailer.bouncekit) share one reason vocabulary."""

from __future__ import annotations

from mailer.bouncekit import REASONS, SENDER_SIDE
from mailer.bouncekit.reasons import SUPPRESS
from mailer.transport import smtp_codes


#: None left: live 5.2.1 "mailbox disabled" is soft, like bouncekit's ``suspend`` (decided from
#: the bounce corpus; see docs/delivery.md "Bounce reasons").
KNOWN_DISAGREEMENTS: frozenset[str] = frozenset()


def test_every_reply_reason_has_a_taxonomy_name_that_agrees_on_whose_problem_it_is():
    # Given every row of the live SMTP reply table
    for rule in smtp_codes.OUTCOMES:
        # When its reason is looked up in the shared taxonomy
        name = smtp_codes.TAXONOMY.get(rule.reason)
        # Then it has a bouncekit name, sender-side rows map to sender-side reasons,
        # and a hard bounce maps to a reason bouncekit also suppresses
        assert name in REASONS, rule
        if rule.side == smtp_codes.SENDER:
            assert name in SENDER_SIDE, rule
        if rule.outcome == "hard" and rule.reason not in KNOWN_DISAGREEMENTS:
            assert REASONS[name].action == SUPPRESS, rule


def test_a_reputation_block_in_the_smtp_session_is_sender_side_in_both_tables():
    # Given a 550 5.7.1 reputation block during sending
    out = smtp_codes.classify(550, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org")
    # Then it is not a hard bounce and its taxonomy name is sender-side
    assert out.outcome != "hard" and out.taxonomy in SENDER_SIDE
