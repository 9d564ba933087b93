"""`clock.timestamp` gives what `Timestamp.FromDatetime` gives, for any time a datetime can hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from kizuna.kit.clock import timestamp


def _reference(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.one_of(st.none(), st.integers(min_value=-23 * 60, max_value=23 * 60)),
)
def test_the_same_timestamp_as_from_datetime(moment: datetime, offset_minutes: int | None) -> None:
    if offset_minutes is not None:
        moment = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert timestamp(moment) == _reference(moment)


def test_edges() -> None:
    for moment in (
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch: nanos stay >= 0
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 8, 9, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=9))),
        datetime(2026, 12, 8, 0, 0, 0, 1),  # naive: taken as UTC
    ):
        assert timestamp(moment) == _reference(moment), moment
    assert timestamp(datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == Timestamp(
        seconds=-1, nanos=999_999_000
    )
