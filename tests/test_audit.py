"""The audit log: appended in the caller's transaction, hash-chained, and refusing edits at the database level."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailer import audit, db
from mailer.errors import ValidationError
from mailer.models import AuditEntry


def test_entries_are_chained_and_verify(app):
    # Given three recorded actions
    with app.session() as s:
        audit.record(s, actor="ann@example.com", action="campaign.send", target="campaign:1", detail={"count": 12},
                     ip="203.0.113.5")
        audit.record(s, actor="cli:root", action="apikey.create", target="apikey:shop")
    with app.session() as s:
        audit.record(s, actor="bob@example.com", action="gdpr.erase", target="customer:7", ip="2001:db8::1")
    # Then they are numbered, linked, and the chain verifies with a head hash
    with app.session() as s:
        rows = list(s.execute(sa.select(AuditEntry).order_by(AuditEntry.seq)).scalars())
        assert [r.seq for r in rows] == [1, 2, 3]
        assert rows[0].prev_hash == audit.GENESIS and rows[1].prev_hash == rows[0].hash
        assert rows[0].detail == {"count": 12} and rows[0].ip == "203.0.113.5"
        result = audit.verify(s)
    assert result.ok and result.entries == 3 and result.head_hash == rows[2].hash


def test_an_entry_rolls_back_with_the_change_it_records(app):
    with pytest.raises(RuntimeError), app.session() as s:
        audit.record(s, actor="ann@example.com", action="suppression.add", target="customer:1")
        raise RuntimeError("the change failed")
    with app.session() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(AuditEntry)).scalar_one() == 0


def test_unknown_actions_and_huge_details_are_refused(app):
    with app.session() as s:
        with pytest.raises(ValueError):
            audit.record(s, actor="x", action="campaign.delete_everything", target="campaign:1")
        with pytest.raises(ValidationError):
            audit.record(s, actor="x", action="campaign.send", target="c", detail={"x": "y" * audit.MAX_DETAIL_BYTES})


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"])
def test_nobody_can_edit_or_delete_the_audit_log(app, db_url, statement):
    # Given a recorded action
    with app.session() as s:
        audit.record(s, actor="ann@example.com", action="gdpr.export", target="customer:1")
    # When anyone tries to change or remove it with plain SQL
    # Then the database itself refuses
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), db.get_engine(db_url).begin() as conn:
        conn.execute(sa.text(statement))
    with app.session() as s:
        assert s.execute(sa.select(AuditEntry.actor)).scalar_one() == "ann@example.com"


def test_a_forged_row_breaks_the_chain(app, db_url):
    with app.session() as s:
        audit.record(s, actor="ann@example.com", action="user.create", target="user:bob@example.com")
        good = s.execute(sa.select(AuditEntry)).scalar_one()
        head = good.hash
    # Given someone who inserts a row by hand (inserts are allowed: the chain catches them)
    with db.get_engine(db_url).begin() as conn:
        conn.execute(sa.text("INSERT INTO audit_log (seq, occurred_at, actor, action, target, prev_hash, hash) "
                             "VALUES (2, CURRENT_TIMESTAMP, 'mallory', 'user.create', 'user:mallory', :p, :h)"),
                     {"p": head, "h": "f" * 64})
    with app.session() as s:
        result = audit.verify(s)
    assert not result.ok and result.first_bad_seq == 2
