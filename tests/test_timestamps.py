"""storage/timestamps.py: the text form of every stored timestamp."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from storage.timestamps import utc_text

EXAMPLE_EPOCH = datetime(2026, 11, 22, 14, 3, 7, 123456, tzinfo=UTC).timestamp()


@pytest.fixture
def far_from_utc(monkeypatch):
    """The process's local time zone set to UTC+05:30 (a POSIX rule: no tzdata needed), then restored."""
    monkeypatch.setenv("TZ", "IST-05:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_timestamp_has_the_exact_documented_format():
    assert utc_text(EXAMPLE_EPOCH) == "2026-11-22T14:03:07.123456Z"


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (EXAMPLE_EPOCH - 0.123456, "2026-11-22T14:03:07.000000Z"),
        (1.9999999, "1970-01-01T00:00:02.000000Z"),  # rounding carries into the seconds
    ],
)
def test_timestamp_always_has_six_fractional_digits(epoch, text):
    assert utc_text(epoch) == text


def test_timestamp_is_utc_whatever_the_local_time_zone(far_from_utc):
    assert time.localtime(EXAMPLE_EPOCH).tm_hour != 14  # the zone really moved
    assert utc_text(EXAMPLE_EPOCH) == "2026-11-22T14:03:07.123456Z"


def test_an_aware_datetime_gives_the_same_text_as_its_epoch():
    moment = datetime(2026, 11, 22, 19, 33, 7, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert utc_text(moment) == utc_text(EXAMPLE_EPOCH) == "2026-11-22T14:03:07.123456Z"


def test_a_year_before_1000_is_padded_to_four_digits():
    assert utc_text(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0999-01-02T03:04:05.000000Z"


def test_timestamps_are_fixed_width_and_sort_as_text_in_time_order():
    epochs = [0, 0.5, 9.000001, 10, 999_999_999.9, 1_000_000_000, EXAMPLE_EPOCH, EXAMPLE_EPOCH + 0.000001,
              EXAMPLE_EPOCH + 86_400 * 40, 4_102_444_800]
    texts = [utc_text(e) for e in epochs]
    assert {len(t) for t in texts} == {len("2026-11-22T14:03:07.123456Z")}
    assert sorted(texts) == texts
    assert len(set(texts)) == len(texts)
