"""The guard's field index finds exactly the overlapping fields a full scan would (surveys included)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.field_index import FieldIndex, FieldRecord

coord = st.floats(-500, 500)
half = st.one_of(st.floats(0.1, 20), st.floats(100, 400))  # fields and surveys
fields = st.lists(st.tuples(coord, coord, half), max_size=40)


@settings(max_examples=100, deadline=None)
@given(fields, coord, coord, half)
def test_overlapping_matches_a_full_scan(records, x, y, h):
    index = FieldIndex(cell_nm=16.0)
    stored = [FieldRecord(rx, ry, rh, 2 * rh, 1.0) for rx, ry, rh in records]
    for r in stored:
        index.add(r)
    expected = {id(r) for r in stored if abs(r.x_nm - x) < r.half_nm + h and abs(r.y_nm - y) < r.half_nm + h}
    assert {id(r) for r in index.overlapping(x, y, h)} == expected
