"""The deterministic segment reductions shared by the Triton backward kernels (segments.py):
the item plan on device, its cache per seg tensor and the stage-2 sums, run by the Triton
interpreter on CPU tensors."""
import gc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import norm, residual, segments

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


@pytest.fixture
def plan_builds(monkeypatch):
    """(S, R) of every segment plan built (not taken from the cache) while the test runs."""
    builds, build = [], segments._build_plan

    def counting(seg, num_segments, rows):
        builds.append((num_segments, rows))
        return build(seg, num_segments, rows)

    monkeypatch.setattr(segments, "_build_plan", counting)
    return builds


def _assert_same_plan(plan, want):
    assert plan.keys() == want.keys()
    assert all(torch.equal(plan[k], want[k]) for k in want)


def test_segment_plan_is_built_once_per_seg_tensor(plan_builds):
    """Every block's backward of one forward shares seg: the plan is built once; a new tensor,
    other sizes and an in-place write to seg build a new one, which matches seg's content."""
    seg = _seg([5, 0, 7])
    plan = segments.segment_plan(seg, 3, 4)
    assert segments.segment_plan(seg, 3, 4) is plan and len(plan_builds) == 1
    segments.segment_plan(seg.clone(), 3, 4)
    segments.segment_plan(seg, 3, 2)
    assert len(plan_builds) == 3
    seg.copy_(_seg([1, 4, 7]))
    _assert_same_plan(segments.segment_plan(seg, 3, 4),
                      segments.segment_plan(_seg([1, 4, 7]), 3, 4))
    assert len(plan_builds) == 5


def test_segment_plan_cache_dies_with_seg(plan_builds):
    seg = _seg([3, 3])
    segments.segment_plan(seg, 2, 4)
    cached = len(segments._PLANS)
    del seg
    gc.collect()
    assert len(segments._PLANS) == cached - 1


def test_no_plan_cache_for_fake_or_inference_tensors(plan_builds):
    """torch.compile traces with fake tensors, which have no data to key a plan on."""
    seg = _seg([2, 5])
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(seg)
        segments.segment_plan(fake, 2, 4)
        segments.segment_plan(fake, 2, 4)
    with torch.inference_mode():
        frozen = _seg([2, 5])
        _assert_same_plan(segments.segment_plan(frozen, 2, 4), segments.segment_plan(frozen, 2, 4))
    assert len(plan_builds) == 4 and fake not in segments._PLANS


@pytest.mark.interpret
def test_backward_reuses_the_plan_of_its_seg(plan_builds):
    """Two backward calls on one seg (two blocks of a forward) build one plan; after an in-place
    change of seg the gradient follows the new segments."""
    gen = torch.Generator().manual_seed(3)
    seg = _seg([6, 0, 9])
    dout, y = torch.randn(15, 24, generator=gen), torch.randn(15, 24, generator=gen)
    gate = torch.randn(3, 24, generator=gen)
    first = residual.gated_residual_bwd(dout, y, gate, seg)[2]
    assert torch.equal(residual.gated_residual_bwd(dout, y, gate, seg)[2], first)
    norm.rms_norm_modulate_bwd(dout, y, None, gate, seg, torch.ones(15))
    assert len(plan_builds) == 1
    seg.copy_(_seg([1, 10, 4]))
    torch.testing.assert_close(residual.gated_residual_bwd(dout, y, gate, seg)[2],
                               reference.gated_residual_bwd(dout, y, gate, seg)[2])
    assert len(plan_builds) == 2
