"""The consent import's time fast path hashes exactly what the general parser would.

``mailer.consent.importer._iso_of`` turns the usual UTC spelling into the ledger's hashed
form by slicing; every other spelling goes through ``datetime.fromisoformat``.  Both must
give the same text, and the calendar must still be checked on the fast path.
"""

from __future__ import annotations

import pytest

from mailer.consent import importer


@pytest.mark.parametrize("value", [
    "2024-03-01T12:00:00Z", "2024-03-01 12:00:00Z", "2024-03-01T12:00:00.123456Z", "2024-03-01T12:00:00+00:00",
    "2024-02-29T23:59:59Z", "2024-03-01T12:00:00.5Z", "2024-03-01T12:00:00", "2024-03-01",
    "2024-03-01T13:00:00+01:00", "1990-01-01T00:00:00Z",
])
def test_every_spelling_hashes_as_the_general_parser_would(value):
    # Given a time in one of the spellings files use
    # When the import turns it into the ledger's form
    fast = importer._iso_of(value)
    # Then it is what parsing it in full and printing it in UTC with microseconds gives
    assert fast == importer._parse_time(value).isoformat(timespec="microseconds")


@pytest.mark.parametrize("value", ["2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-03-01T24:00:00Z",
                                   "2024-03-01T12:60:00Z", "2024-03-01T12:00:60Z"])
def test_the_fast_path_still_checks_the_calendar(value):
    # Given a well-shaped time that names no moment
    # When it is parsed, Then it is refused as the general parser refuses it
    with pytest.raises(ValueError):
        importer._iso_of(value)


def test_bounds_are_compared_in_the_hashed_form():
    # Given the earliest accepted time and one just before it
    row_ok, row_early = {"occurred_at": "1990-01-01T00:00:00Z"}, {"occurred_at": "1989-12-31T23:59:59.999999Z"}
    latest = importer._iso_of("2030-01-01T00:00:00Z")
    # When they are checked, Then the first passes and the second is named as too early
    assert importer._time(row_ok, "occurred_at", latest, required=True) == "1990-01-01T00:00:00.000000+00:00"
    with pytest.raises(importer._Bad, match="before 1990-01-01"):
        importer._time(row_early, "occurred_at", latest, required=True)
    # And a time after the latest accepted one is in the future
    with pytest.raises(importer._Bad, match="in the future"):
        importer._time({"occurred_at": "2030-01-01T00:00:00.000001Z"}, "occurred_at", latest, required=True)
