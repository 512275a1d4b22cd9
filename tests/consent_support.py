"""Helpers for consent tests and benchmarks: a fast valid chain, and deliberate tampering.

``bulk_chain`` writes customers and a correctly hashed chain (format v2) with
executemany (no ORM), so a million events take seconds; the database's derivation
trigger keeps consent_state.  ``unprotected`` opens a connection on which the
append-only triggers (and foreign keys) are switched off, the way an attacker with
database access would, so tamper tests can change rows the application never could.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from datetime import datetime, timedelta, timezone
from typing import Iterator

import sqlalchemy as sa

from mailer import db
from mailer.addresses import email_hash
from mailer.consent import ledger as consent
from mailer.instance_secrets import address_hash_salt
from mailer.models import ConsentEvent, ConsentEvidence, Customer
from mailer.settings import Settings

#: Rows per executemany round trip.
CHUNK = 5000
BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)
WORDING = "Yes, send me the Northwind newsletter. I can unsubscribe at any time."


def bulk_chain(settings: Settings, n_events: int, *, n_customers: int | None = None, seed: int = 1,
               purposes: tuple[str, ...] = ("newsletter", "product_updates", "loyalty"),
               progress=None) -> None:
    """Append ``n_events`` valid events (and their customers and evidence) after the current head."""
    rng = random.Random(seed)
    engine = db.get_engine(settings)
    salt = address_hash_salt(settings)
    n_customers = n_customers or max(1, n_events // 3)
    wording_sha = hashlib.sha256(WORDING.encode()).hexdigest()
    with engine.begin() as conn:
        first_id = (conn.execute(sa.select(sa.func.max(Customer.__table__.c.id))).scalar() or 0) + 1
        rows = []
        for i in range(n_customers):
            email = f"subscriber{first_id + i}@example{(first_id + i) % 97}.com"
            rows.append({"id": first_id + i, "email": email, "email_hash": email_hash(email, salt),
                         "total_spent": 0, "orders_count": 0, "attributes": {}, "created_at": BASE_TIME,
                         "updated_at": BASE_TIME, "locale": "en"})
            if len(rows) >= CHUNK:
                conn.execute(sa.insert(Customer.__table__), rows)
                rows = []
        if rows:
            conn.execute(sa.insert(Customer.__table__), rows)
        t = ConsentEvent.__table__.c
        last = conn.execute(sa.select(t.seq, t.hash, t.id).order_by(t.seq.desc()).limit(1)).first()
        seq, prev, next_id = (last.seq, last.hash, last.id + 1) if last else (0, consent.GENESIS, 1)
        events, evidence = [], []
        for i in range(n_events):
            seq += 1
            cid = first_id + rng.randrange(n_customers)
            purpose = rng.choice(purposes)
            granted = rng.random() < 0.7
            when = BASE_TIME + timedelta(seconds=seq * 7, microseconds=rng.randrange(1_000_000))
            email = f"subscriber{cid}@example{cid % 97}.com"
            ip = f"192.0.2.{rng.randrange(1, 255)}"
            fields = {"seq": seq, "subject_hash": email_hash(email, salt), "purpose": purpose,
                      "action": "granted" if granted else "withdrawn", "basis": "consent",
                      "source": "signup_form" if granted else "unsubscribe_link",
                      "occurred_at": consent._iso(when), "recorded_at": consent._iso(when),
                      "form_id": "footer" if granted else None, "wording_sha256": wording_sha if granted else None,
                      "wording_version": "2026-01" if granted else None, "confirmed_at": None,
                      "ip_digest": hashlib.sha256(salt + ip.encode()).hexdigest(), "user_agent_digest": None,
                      "customer_id": cid, "chain_format": consent.CHAIN_FORMAT}
            h = consent.chain_hash(prev, fields)
            events.append({"id": next_id, "seq": seq, "customer_id": cid, "subject_hash": fields["subject_hash"],
                           "purpose": purpose, "action": fields["action"], "basis": "consent",
                           "source": fields["source"], "occurred_at": when, "recorded_at": when,
                           "form_id": fields["form_id"], "wording": WORDING if granted else None,
                           "wording_version": fields["wording_version"], "wording_sha256": fields["wording_sha256"],
                           "confirmed_at": None, "ip_digest": fields["ip_digest"], "user_agent_digest": None,
                           "prev_hash": prev, "hash": h, "chain_format": consent.CHAIN_FORMAT})
            evidence.append({"event_id": next_id, "email": email, "ip": ip, "user_agent": None})
            prev = h
            next_id += 1
            if len(events) >= CHUNK:
                conn.execute(sa.insert(ConsentEvent.__table__), events)
                conn.execute(sa.insert(ConsentEvidence.__table__), evidence)
                if progress:
                    progress(len(events))
                events, evidence = [], []
        if events:
            conn.execute(sa.insert(ConsentEvent.__table__), events)
            conn.execute(sa.insert(ConsentEvidence.__table__), evidence)


@contextlib.contextmanager
def unprotected(url: str) -> Iterator[sa.Connection]:
    """A connection on which consent_events and consent_state can be changed: triggers and foreign keys off.

    This is what an attacker with database access could do; the application never does.
    """
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS consent_events_no_update")
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS consent_events_no_delete")
                for name in ("consent_events_derive_state", "consent_state_guard_insert",
                             "consent_state_guard_update", "consent_state_guard_delete"):
                    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            else:
                # Replica mode skips ordinary triggers and foreign-key checks for this session.
                conn.exec_driver_sql("SET session_replication_role = replica")
            yield conn
            conn.commit()
    finally:
        engine.dispose()


def renumber(conn: sa.Connection, *, from_seq: int, delta: int) -> None:
    """Shift seq of every event >= from_seq by delta, in two steps so UNIQUE(seq) never collides."""
    conn.exec_driver_sql(f"UPDATE consent_events SET seq = -(seq + ({delta})) WHERE seq >= {from_seq}")
    conn.exec_driver_sql("UPDATE consent_events SET seq = -seq WHERE seq < 0")
