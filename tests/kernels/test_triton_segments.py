"""The deterministic segment reductions shared by the Triton backward kernels (segments.py):
the item plan on device and the stage-2 sums, run by the Triton interpreter on CPU tensors."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgkernels.kernels.triton import segments

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

SEGMENTS = st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda ls: sum(ls) > 0)


def _seg(lengths):
    counts = torch.tensor(lengths, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), counts)


@settings(max_examples=10, deadline=None)
@given(lengths=SEGMENTS, rows=st.integers(1, 5))
def test_segment_plan_covers_each_segment_once(lengths, rows):
    """Every row lies in exactly one item, items never cross a segment, hold ≤ `rows` rows,
    and the items of segment s are exactly [first[s], last[s])."""
    seg = _seg(lengths)
    plan = segments.segment_plan(seg, len(lengths), rows)
    start, end, item_seg = plan["start"].long(), plan["end"].long(), plan["seg"].long()
    assert start.shape[0] == -(-seg.shape[0] // rows) + len(lengths)
    assert bool(((end - start) <= rows).all()) and bool((end >= start).all())
    covered = torch.zeros(seg.shape[0], dtype=torch.int64)
    for i in range(start.shape[0]):
        covered[start[i]:end[i]] += 1
        assert bool((seg[start[i]:end[i]] == item_seg[i]).all())
    assert bool((covered == 1).all())
    for s in range(len(lengths)):
        items = torch.arange(plan["first"][s], plan["last"][s])
        assert int((end[items] - start[items]).sum()) == lengths[s]
        assert torch.equal(((item_seg == s) & (end > start)).nonzero().flatten(), items)


@pytest.mark.interpret
def test_segment_sum_adds_the_items_of_each_segment(poisoned_empty):
    partials = torch.randn(7, 20)
    first = torch.tensor([0, 3, 3, 6], dtype=torch.int32)
    last = torch.tensor([3, 3, 6, 7], dtype=torch.int32)
    out = segments.segment_sum(partials, first, last, torch.float32)
    want = torch.stack([partials[0:3].sum(0), torch.zeros(20), partials[3:6].sum(0), partials[6]])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(segments.column_sum(partials, torch.float16),
                               partials.sum(0).half())
