"""Fault 4: consent withdrawn while a campaign is being sent.

While two workers send a campaign, 150 customers who have not yet received it withdraw
their newsletter consent one by one (each withdrawal its own transaction, as the
unsubscribe link or preference centre does).  No mail reaches a customer after their
withdrawal committed: the SMTP server's arrival order is compared with the moment each
withdrawal returned.  On PostgreSQL the send path holds the consent row ``FOR SHARE``
until the relay has answered, so a withdrawal never commits while a mail that passed
the consent check is still on its way.
"""

from __future__ import annotations

import pytest

from mailer import db
from mailer.consent import ledger as consent
from mailer.models import Customer, DeliveryStatus

pytestmark = [pytest.mark.slow, pytest.mark.smtp, pytest.mark.postgres]

RECIPIENTS = 600
WITHDRAWING = 150
#: Mails per second across both workers: 600 mails take about 30 s.
RELAY_RATE = 20


def test_no_mail_reaches_a_customer_after_their_withdrawal(fault):
    # Given a campaign to 600 consenting customers and two workers of two threads each,
    # paced by the shared relay rate so the campaign outlasts the withdrawals even on a
    # loaded machine (the check below needs most withdrawals to land before their mail)
    run = fault(consenting=RECIPIENTS, threads=2, worker_settings={"relay_rate": RELAY_RATE})
    withdrawn_at: dict[str, int] = {}     # address -> number of mails the server had when it committed
    with run.live():
        run.workers.start(), run.workers.start()
        # And the campaign is being sent
        run.send()
        run.wait_received(60, "the first mails")
        # When 150 customers who have not received it yet withdraw consent, one by one
        reached = {rcpt for r in list(run.sink.received) for rcpt in r.rcpt_tos}
        targets = [cid for cid, addr in sorted(run.consenting.items(), reverse=True) if addr not in reached]
        for cid in targets[:WITHDRAWING]:
            with db.session_scope(run.settings) as s:
                customer = s.get(Customer, cid)
                consent.append(s, run.settings, customer=customer, purpose="newsletter", action="withdrawn",
                               source="preference_centre")
            withdrawn_at[run.consenting[cid]] = run.received()
        # Then the campaign completes
        run.wait_completed()
    assert len(withdrawn_at) == WITHDRAWING
    # And no mail to a withdrawn customer arrived after their withdrawal committed
    received = list(run.sink.received)
    late = [(i, r.rcpt_tos[0]) for i, r in enumerate(received)
            if r.rcpt_tos[0] in withdrawn_at and i >= withdrawn_at[r.rcpt_tos[0]]]
    assert late == []
    # And their deliveries were skipped for lack of consent unless they had already been sent
    rows = {r.to_address: r for r in run.deliveries()}
    skipped = [a for a in withdrawn_at if rows[a].status is DeliveryStatus.skipped]
    early = [a for a in withdrawn_at if rows[a].status is DeliveryStatus.sent]
    assert len(skipped) + len(early) == WITHDRAWING
    assert all(rows[a].reason == "no current consent for newsletter" for a in skipped)
    print(f"{len(skipped)} skipped, {len(early)} sent before their withdrawal")
    assert len(skipped) > WITHDRAWING // 2
    # And everyone else got theirs
    others = set(run.consenting.values()) - set(withdrawn_at)
    assert all(rows[a].status is DeliveryStatus.sent for a in others)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(others | set(early))
