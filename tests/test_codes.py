"""Reward-code pools: import (all or nothing), atomic claims under concurrency, status, release."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailer import db
from mailer.automations import codes
from mailer.cli import main
from mailer.clock import utcnow
from mailer.customers.records import get_or_create
from mailer.errors import PoolExhausted, ValidationError
from mailer.models import Delivery, DeliveryStatus, RewardCode
from tests.conftest import make_settings


def _customers(url: str, n: int) -> list[int]:
    settings = make_settings(database_url=url)
    with db.session_scope(url) as s:
        return [get_or_create(s, settings, f"c{i}@example.com").id for i in range(n)]


def _write_codes(path, n: int, *, header: bool = True, prefix: str = "VIP") -> None:
    lines = (["code,value"] if header else []) + [f"{prefix}-{i:04d},10" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_import_loads_codes_and_a_second_import_adds_nothing(db_url, tmp_path):
    # Given a CSV of 5 codes with a header and values
    f = tmp_path / "codes.csv"
    _write_codes(f, 5)
    settings = make_settings(database_url=db_url)
    # When it is imported twice
    first = codes.import_file(settings, "vip", f)
    second = codes.import_file(settings, "vip", f)
    # Then the first adds 5, the second none (already present), and status shows 5 free
    assert (first.added, first.already_present, first.errors) == (5, 0, [])
    assert (second.added, second.already_present) == (0, 5)
    with db.session_scope(db_url) as s:
        st = codes.status(s, "vip")
        assert (st.total, st.assigned, st.free) == (5, 0, 5)
        assert s.execute(select(RewardCode.value).limit(1)).scalar_one() == "10"


def test_import_without_header_and_with_expiry(sqlite_url, tmp_path):
    f = tmp_path / "codes.txt"
    f.write_text("GIFT-1\nGIFT-2,50.00,2020-01-31\n", encoding="utf-8")
    settings = make_settings(database_url=sqlite_url)
    result = codes.import_file(settings, "gift", f)
    assert result.added == 2 and not result.errors
    with db.session_scope(sqlite_url) as s:
        st = codes.status(s, "gift")
        # GIFT-2 expired in 2020: it is not free
        assert (st.total, st.expired, st.free) == (2, 1, 1)


def test_bad_rows_import_nothing_and_name_line_and_column(db_url, tmp_path):
    # Given a file with a duplicate, a code with a space and a bad date among good rows
    f = tmp_path / "codes.csv"
    f.write_text("code,value,expires_at\nA-1,5,\nA-2,5,2027-01-01\nA-1,5,\nBAD CODE,,\nA-3,,next week\n"
                 "A-4,5%,\n", encoding="utf-8")
    settings = make_settings(database_url=db_url)
    # When it is imported
    result = codes.import_file(settings, "vip", f)
    # Then every bad row is named with its line and column, and nothing was imported
    messages = [str(e) for e in result.errors]
    assert messages == [
        "line 4, column code: 'A-1' already appears on line 2",
        "line 5, column code: empty, longer than 100 characters, or has spaces or control characters",
        "line 6, column expires_at: 'next week' is not an ISO 8601 date or date-time",
        "line 7, column value: '5%' is not a number such as 15 or 50.00 (percent or amount, as the automation says)",
    ]
    with db.session_scope(db_url) as s:
        assert codes.status(s, "vip").total == 0


def test_unknown_column_and_bad_pool_name_are_refused(sqlite_url, tmp_path):
    settings = make_settings(database_url=sqlite_url)
    f = tmp_path / "codes.csv"
    f.write_text("code,discount\nA,1\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="line 1: unknown column 'discount'"):
        codes.import_file(settings, "vip", f)
    with pytest.raises(ValidationError, match="pool name"):
        codes.import_file(settings, "no spaces please", f)


def test_claim_gives_distinct_codes_then_a_clear_error(db_url, tmp_path):
    # Given a pool of 2 codes and 3 customers
    f = tmp_path / "codes.csv"
    _write_codes(f, 2)
    codes.import_file(make_settings(database_url=db_url), "vip", f)
    ids = _customers(db_url, 3)
    got = []
    # When each claims a code
    with db.session_scope(db_url) as s:
        got.append(codes.claim(s, "vip", customer_id=ids[0]).code)
        got.append(codes.claim(s, "vip", customer_id=ids[1]).code)
        # Then the third gets a clear PoolExhausted naming the pool and the fix
        with pytest.raises(PoolExhausted, match=r"pool 'vip' is exhausted: all 2 codes .*mailer codes import vip"):
            codes.claim(s, "vip", customer_id=ids[2])
    assert sorted(got) == ["VIP-0000", "VIP-0001"]
    with db.session_scope(db_url) as s:
        assert codes.status(s, "vip").free == 0
        owners = s.execute(select(RewardCode.customer_id).order_by(RewardCode.id)).scalars().all()
        assert owners == ids[:2]


def test_claim_from_an_empty_pool_says_it_has_no_codes(sqlite_url):
    ids = _customers(sqlite_url, 1)
    with db.session_scope(sqlite_url) as s:
        with pytest.raises(PoolExhausted, match="pool 'nothing' has no codes"):
            codes.claim(s, "nothing", customer_id=ids[0])


def test_expired_codes_are_never_given(sqlite_url):
    ids = _customers(sqlite_url, 1)
    now = utcnow()
    with db.session_scope(sqlite_url) as s:
        s.add_all([RewardCode(pool="p", code="OLD", expires_at=now - timedelta(days=1)),
                   RewardCode(pool="p", code="NEW", expires_at=now + timedelta(days=1))])
    with db.session_scope(sqlite_url) as s:
        assert codes.claim(s, "p", customer_id=ids[0]).code == "NEW"
        with pytest.raises(PoolExhausted):
            codes.claim(s, "p", customer_id=ids[0])


def _claim_in_own_transaction(url: str, customer_id: int, barrier: threading.Barrier | None) -> str:
    if barrier is not None:
        barrier.wait()
    try:
        with db.session_scope(url) as s:
            return codes.claim(s, "vip", customer_id=customer_id).code
    except PoolExhausted as exc:
        return f"exhausted: {exc}"


def test_fifty_concurrent_claims_on_forty_codes_give_forty_distinct_codes(db_url, tmp_path):
    # Given 40 codes and 50 customers
    f = tmp_path / "codes.csv"
    _write_codes(f, 40)
    codes.import_file(make_settings(database_url=db_url), "vip", f)
    ids = _customers(db_url, 50)
    barrier = threading.Barrier(50)
    # When 50 threads claim at the same moment, each in its own transaction
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda cid: _claim_in_own_transaction(db_url, cid, barrier), ids))
    # Then 40 got 40 distinct codes and 10 got a clear "exhausted"
    got = [r for r in results if not r.startswith("exhausted")]
    failed = [r for r in results if r.startswith("exhausted")]
    assert len(got) == 40 and len(set(got)) == 40
    assert len(failed) == 10 and all("pool 'vip' is exhausted" in r for r in failed)
    with db.session_scope(db_url) as s:
        owners = s.execute(select(RewardCode.customer_id)).scalars().all()
        assert len(set(owners)) == 40 and None not in owners


def _process_claims(url: str, customer_ids: list[int], queue) -> None:
    db.dispose_engines()  # a forked child must not share the parent's connections
    with ThreadPoolExecutor(len(customer_ids)) as pool:
        for result in pool.map(lambda cid: _claim_in_own_transaction(url, cid, None), customer_ids):
            queue.put(result)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite has one writer anyway
def test_claims_from_several_processes_never_share_a_code(db_url, tmp_path):
    # Given 40 codes and 50 customers
    f = tmp_path / "codes.csv"
    _write_codes(f, 40)
    codes.import_file(make_settings(database_url=db_url), "vip", f)
    ids = _customers(db_url, 50)
    db.dispose_engines()
    # When 5 worker processes with 10 threads each claim at once
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process_claims, args=(db_url, ids[i::5], queue)) for i in range(5)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(50)]
    for p in procs:
        p.join(timeout=60)
    # Then still 40 distinct codes and 10 clear failures
    got = [r for r in results if not r.startswith("exhausted")]
    assert len(got) == 40 and len(set(got)) == 40
    assert sum(r.startswith("exhausted") for r in results) == 10


def test_codes_of_unsent_mail_go_back_to_the_pool(sqlite_url):
    # Given two codes claimed for two deliveries: one cancelled, one sent
    ids = _customers(sqlite_url, 2)
    with db.session_scope(sqlite_url) as s:
        s.add_all([RewardCode(pool="p", code="A"), RewardCode(pool="p", code="B")])
    with db.session_scope(sqlite_url) as s:
        deliveries = []
        for cid, status in zip(ids, (DeliveryStatus.cancelled, DeliveryStatus.sent)):
            d = Delivery(idempotency_key=f"k{cid}", kind="reward_code", customer_id=cid, to_hash="h", locale="en",
                         purpose="loyalty", status=status)
            s.add(d)
            s.flush()
            c = codes.claim(s, "p", customer_id=cid)
            codes.attach(s, c.id, d.id)
            deliveries.append(d.id)
    # When unsent codes are released
    with db.session_scope(sqlite_url) as s:
        released = codes.release_unsent(s)
    # Then only the cancelled mail's code is free again
    with db.session_scope(sqlite_url) as s:
        rows = {r.code: r for r in s.execute(select(RewardCode)).scalars()}
        assert released == 1
        assert rows["A"].assigned_at is None and rows["A"].customer_id is None
        assert rows["B"].customer_id == ids[1] and rows["B"].delivery_id == deliveries[1]


def test_cli_import_and_status(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"MAILER_DATABASE_URL": url, "MAILER_BROKER_URL": "stub://"}
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    f = tmp_path / "codes.csv"
    _write_codes(f, 3)
    res = runner.invoke(main, ["codes", "import", "vip", str(f)], env=env)
    assert res.exit_code == 0, res.output
    assert "added 3 codes" in res.output
    res = runner.invoke(main, ["codes", "status", "vip"], env=env)
    assert res.exit_code == 0 and "vip" in res.output and "3" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("code\nX\nX\n", encoding="utf-8")
    res = runner.invoke(main, ["codes", "import", "vip", str(bad)], env=env)
    assert res.exit_code == 1
    assert "line 3, column code: 'X' already appears on line 2" in res.output
    assert "nothing imported" in res.output
    res = runner.invoke(main, ["codes", "status", "none"], env=env)
    assert res.exit_code == 1 and "has no codes" in res.output
    db.dispose_engines()
