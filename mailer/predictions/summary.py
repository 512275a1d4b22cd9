"""The RFM summary the purchase models are fitted on, built from raw orders.

Owns the step from a list of orders ``(customer_id, placed_at, amount)`` and an as-of
date to one row per customer, exactly as Fader, Hardie & Lee (2005) set it up:

* time is counted in weeks of 7 days, on whole days (``placed_at`` is floored to its day;
  the caller decides the day boundary, normally the shop's local time);
* all orders of one customer on one day are one transaction (their amounts are summed);
* orders after the as-of day are ignored, orders on the as-of day count;
* ``x`` = repeat transactions (transactions after the first one) up to as-of,
  ``t_x`` = (day of the last transaction - day of the first) / 7 (0 when ``x`` = 0),
  ``T`` = (as-of day - day of the first transaction) / 7,
  ``mean_spend`` = mean amount of the repeat transactions (NaN when ``x`` = 0: there is
  nothing to average, and the spend model does not use those customers).

Everything is numpy and vectorized; 5,000,000 orders need a few hundred MB at most (one
int64 sort key per order plus the sort permutation).  Nothing here touches a database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

DAYS_PER_WEEK = 7
MAX_ORDERS = 50_000_000  # the bound on one summary's input: about 2 GB of sort keys


class OrderDataError(ValueError):
    """An order cannot be used; the message names the order (0-based position) and field."""


@dataclass(frozen=True)
class RFMSummary:
    """One row per customer with at least one order on or before ``as_of``.

    Arrays are aligned and sorted by customer id.  ``first_day`` is the day of the first
    transaction as numpy ``datetime64[D]``.
    """

    as_of: dt.date
    customer_ids: np.ndarray
    x: np.ndarray  # repeat transactions, int64
    t_x_weeks: np.ndarray  # recency, float64
    T_weeks: np.ndarray  # age at as-of, float64
    mean_spend: np.ndarray  # mean repeat-transaction amount, float64, NaN where x == 0
    first_day: np.ndarray  # datetime64[D]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def repeat_transactions(self) -> int:
        return int(self.x.sum())


def _as_days(placed_at, n: int) -> np.ndarray:
    """``placed_at`` as int64 days since 1970-01-01 (floored), or OrderDataError."""
    arr = np.asarray(placed_at)
    if arr.shape != (n,):
        raise OrderDataError(f"placed_at: expected {n} values, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.datetime64):
        days = arr.astype("datetime64[D]")
    else:
        try:
            days = arr.astype("datetime64[D]")
        except (TypeError, ValueError) as exc:
            raise OrderDataError(f"placed_at: not dates or datetimes ({exc})") from None
    bad = np.isnat(days)
    if bad.any():
        i = int(np.argmax(bad))
        raise OrderDataError(f"order {i}: placed_at is missing (NaT)")
    return days.astype(np.int64)


def _as_day(as_of) -> tuple[dt.date, int]:
    if isinstance(as_of, dt.datetime):
        as_of = as_of.date()
    if not isinstance(as_of, dt.date):
        raise OrderDataError(f"as_of: expected a date, got {type(as_of).__name__}")
    return as_of, int(np.datetime64(as_of, "D").astype(np.int64))


def build_summary(customer_ids, placed_at, amounts, as_of: dt.date) -> RFMSummary:
    """The paper's RFM summary of ``orders`` as of the end of day ``as_of``.

    ``customer_ids``: any array of ints or strings; ``placed_at``: dates, datetimes or
    numpy datetime64 values; ``amounts``: non-negative finite numbers (the order total in
    the shop's currency).  Raises :class:`OrderDataError` naming the first bad order.
    """
    as_of, as_of_day = _as_day(as_of)
    ids = np.asarray(customer_ids)
    n = ids.shape[0] if ids.ndim == 1 else -1
    if ids.ndim != 1:
        raise OrderDataError(f"customer_ids: expected a flat list, got shape {ids.shape}")
    if n > MAX_ORDERS:
        raise OrderDataError(f"too many orders: {n} (the limit is {MAX_ORDERS})")
    days = _as_days(placed_at, n)
    try:
        amt = np.asarray(amounts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OrderDataError(f"amounts: not numbers ({exc})") from None
    if amt.shape != (n,):
        raise OrderDataError(f"amounts: expected {n} values, got shape {amt.shape}")
    bad = ~np.isfinite(amt) | (amt < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise OrderDataError(f"order {i}: amount {amt[i]!r} is not a finite number >= 0")

    keep = days <= as_of_day
    if not keep.all():
        ids, days, amt = ids[keep], days[keep], amt[keep]
    if ids.shape[0] == 0:
        empty_f = np.empty(0, dtype=np.float64)
        return RFMSummary(as_of, ids, np.empty(0, dtype=np.int64), empty_f, empty_f.copy(), empty_f.copy(),
                          np.empty(0, dtype="datetime64[D]"))

    # Customer codes 0..k-1 in id order, then one int64 key per order: code * span + day.
    uniq_ids, codes = np.unique(ids, return_inverse=True)
    del ids
    codes = codes.astype(np.int64, copy=False)
    min_day = int(days.min())
    span = as_of_day - min_day + 1
    key = codes * span + (days - min_day)
    del codes, days
    order = np.argsort(key, kind="stable")
    key = key[order]
    amt = amt[order]
    del order

    # Transactions: runs of equal key (one customer, one day); amounts summed.
    new_txn = np.empty(key.shape[0], dtype=bool)
    new_txn[0] = True
    np.not_equal(key[1:], key[:-1], out=new_txn[1:])
    txn_start = np.flatnonzero(new_txn)
    del new_txn
    txn_amount = np.add.reduceat(amt, txn_start)
    txn_key = key[txn_start]
    del amt, key, txn_start
    txn_code = txn_key // span
    txn_day = txn_key % span  # days since min_day
    del txn_key

    # Customers: runs of equal code among the transactions.
    new_cust = np.empty(txn_code.shape[0], dtype=bool)
    new_cust[0] = True
    np.not_equal(txn_code[1:], txn_code[:-1], out=new_cust[1:])
    cust_start = np.flatnonzero(new_cust)
    del new_cust, txn_code
    cust_end = np.append(cust_start[1:], txn_day.shape[0]) - 1
    n_txn = cust_end - cust_start + 1
    x = (n_txn - 1).astype(np.int64)
    first = txn_day[cust_start]
    last = txn_day[cust_end]
    total = np.add.reduceat(txn_amount, cust_start)
    repeat_total = total - txn_amount[cust_start]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_spend = np.where(x > 0, repeat_total / np.maximum(x, 1), np.nan)
    t_x = (last - first) / DAYS_PER_WEEK
    T = ((as_of_day - min_day) - first) / DAYS_PER_WEEK
    first_day = (first + min_day).astype("datetime64[D]")
    return RFMSummary(as_of, uniq_ids, x, t_x.astype(np.float64), T.astype(np.float64), mean_spend, first_day)
