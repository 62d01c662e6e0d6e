"""Host -> device copies of small index tensors: built on the host, copied without a host sync.

A torch.tensor(list, device=cuda) is a blocking pageable copy; the model builds such data on the
host and moves it with tokens.to_device (pinned + non_blocking on CUDA). On CPU we check that no
host data is ever materialised directly on the target device (run under the meta device, where
that would show up as device=meta); on CUDA, that a forward triggers no synchronizing copy.
"""
import pytest
import torch
from model_helpers import inputs, small_config

from sgkernels.model import RoutedDiT, TextBatch
from sgkernels.model.routing import uniform_scores
from sgkernels.model.tokens import to_device
from sgkernels.sampling.packing import draw_route_scores


def text_config():
    return small_config("llama", num_classes=0, text_conditioned=True, text_dim=24, text_len=6,
                        text_layers=1)


def test_to_device_values_and_dtypes():
    out = to_device([0, 3, 7], "cpu", torch.int32)
    assert out.dtype == torch.int32 and out.tolist() == [0, 3, 7]
    host = torch.tensor([1.5, 2.5])
    assert to_device(host, "cpu", torch.float64).dtype == torch.float64
    meta = to_device((1, 2), "meta", torch.int64)
    assert meta.device.type == "meta" and meta.shape == (2,)


@pytest.mark.parametrize("text", [False, True])
def test_forward_builds_index_data_on_the_host(monkeypatch, text):
    made_on = []
    real = torch.tensor

    def recording_tensor(data, *args, **kwargs):
        out = real(data, *args, **kwargs)
        made_on.append(out.device.type)
        return out

    cfg = text_config() if text else small_config("llama")
    with torch.device("meta"):
        model = RoutedDiT(cfg).train()
        x = torch.randn(3, cfg.in_channels, 8, 8)
        t = torch.rand(3)
        y = None if text else torch.zeros(3, dtype=torch.int64)
        kw = {"text": TextBatch(torch.randn(9, 24), (2, 3, 4))} if text else {}
        monkeypatch.setattr(torch, "tensor", recording_tensor)
        v = model(x, t, y, gamma=[0.5, 0.2, 0.0], **kw)
    assert v.shape == x.shape
    assert made_on and set(made_on) == {"cpu"}, made_on


@pytest.mark.gpu
@pytest.mark.parametrize("text", [False, True])
def test_cuda_forward_has_no_synchronizing_copies(text):
    cfg = text_config() if text else small_config("llama")
    model = RoutedDiT(cfg).cuda().eval()
    x, t, y = (v.cuda() for v in inputs(cfg))
    kw = {"text": TextBatch(torch.randn(9, 24), (2, 3, 4)).to("cuda")} if text else {}
    g = torch.Generator().manual_seed(0)                        # a CPU generator drives CUDA
    model(x, t, None if text else y, gamma=[0.5, 0.2, 0.0], generator=g, **kw)   # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            v = model(x, t, None if text else y, gamma=[0.5, 0.2, 0.0], generator=g, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert v.shape == x.shape and torch.isfinite(v).all()


@pytest.mark.gpu
def test_uniform_scores_from_a_cpu_generator_match_on_cuda():
    cpu = uniform_scores((2, 5), torch.Generator().manual_seed(3), "cpu")
    cuda = uniform_scores((2, 5), torch.Generator().manual_seed(3), "cuda")
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=0)


def test_default_scores_are_the_sampler_draw():
    # model(…, generator=g) and the sampler's draw_route_scores(…, g) select the same tokens
    cfg = small_config("llama")
    model = RoutedDiT(cfg).eval()
    x, t, y = inputs(cfg)
    _, keep = model(x, t, y, gamma=0.5, generator=torch.Generator().manual_seed(4),
                    return_keep=True)
    scores = draw_route_scores(cfg, 3, torch.Generator().manual_seed(4), x.device)
    _, again = model(x, t, y, gamma=0.5, route_scores=scores, return_keep=True)
    assert torch.equal(keep, again) and not keep.all()


@pytest.mark.gpu
def test_to_device_back_to_cpu_is_complete_on_return():
    big = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
    assert torch.equal(to_device(big * 2, "cpu"), torch.arange(1 << 20) * 2.0)
