"""sample(compile=...) and sample(cuda_graphs=True): outputs equal eager, a bounded number of
compiled graphs over guided runs with changing drop rates, the CUDA-graph cache's host logic on
CPU (a stand-in capture) and the captured path itself on a GPU."""
import pytest
import torch
from test_packing import tiny_model
from torch._dynamo.utils import counters

from sgkernels.guidance import CFGSparseGuidance, Schedule, SparseGuidance
from sgkernels.sampling import sample
from sgkernels.sampling.graphs import GraphCache
from sgkernels.sampling.packing import call_model, guided_velocity

AOT = {"backend": "aot_eager"}      # the graphs as traced, no code generation: fast to build


def _inputs(model, batch=2, device="cpu"):
    cfg = model.config
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    return noise.to(device), torch.tensor([1, 7][:batch], device=device)


def _run(model, guidance, steps=4, **kw):
    noise, labels = _inputs(model)
    return sample(model, noise, labels, steps=steps, guidance=guidance,
                  generator=torch.Generator().manual_seed(5), **kw)


def _graphs():
    return counters["stats"]["unique_graphs"]


def test_compiled_sampling_equals_eager_with_a_bounded_number_of_graphs():
    model = tiny_model()
    sg = SparseGuidance(2.0, Schedule.cosine(0.2, 0.6), Schedule.linear(0.6, 0.9))  # new rates
    cfg_sg = CFGSparseGuidance(2.0, 1.0, 0.2, 0.7)                                  # each step
    eager = [_run(model, g) for g in (sg, cfg_sg)]
    torch._dynamo.reset()
    counters.clear()
    compiled = _run(model, sg, compile=AOT)
    # two token counts per step (γ_strong, γ_weak), four steps of new rates: two graphs, the
    # plain block and the block after the fused Llama route start
    assert _graphs() == 2 and not counters["graph_break"]
    torch.testing.assert_close(compiled, eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_run(model, cfg_sg, compile=AOT), eager[1], rtol=1e-5, atol=1e-5)
    assert _graphs() == 2                                    # three branches, batch 3 × B: reused
    assert model.compile_options == {"dynamic": True, "fullgraph": True, **AOT}


@pytest.mark.slow
def test_compile_true_with_inductor_equals_eager():
    model = tiny_model()
    guidance = SparseGuidance(2.0, 0.5, 0.9)
    eager = _run(model, guidance, steps=2)
    torch._dynamo.reset()
    counters.clear()
    torch.testing.assert_close(_run(model, guidance, steps=2, compile=True), eager,
                               rtol=1e-4, atol=1e-4)
    assert _graphs() <= 2


def test_fast_path_arguments_are_checked():
    model = tiny_model()
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        _run(model, None, steps=1, compile="yes")
    with pytest.raises(ValueError, match="cuda_graphs=True needs CUDA tensors"):
        _run(model, None, steps=1, cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool or a sampling.graphs"):
        _run(model, None, steps=1, cuda_graphs=1)
    with pytest.raises(ValueError, match="cuda_graphs=True needs CUDA tensors"):
        _run(model, None, steps=1, cuda_graphs=GraphCache())

    class Plain(torch.nn.Module):
        config = model.config

        def forward(self, *args, **kw):
            return model(*args, **kw)
    with pytest.raises(TypeError, match="compile_blocks"):
        _run(Plain(), None, steps=1, compile=True)


class _FakeCapture:
    """Stand-in for capture_cuda_graph on CPU: 'replay' reruns the call on the static inputs
    and writes the static output, as a CUDA graph would."""

    def __init__(self):
        self.captures = 0

    def __call__(self, run, pool):
        self.captures += 1
        out = run()

        def replay():
            out.copy_(run())
        return replay, out, ("pool", self.captures if pool is None else pool[1]), []


def test_graph_cache_captures_each_shape_once_and_replays_it():
    model = tiny_model()
    capture = _FakeCapture()
    cache = GraphCache(capture)
    x, labels = _inputs(model)
    steady = SparseGuidance(2.0, 0.5, 0.9).terms(0, 4)
    once = SparseGuidance(2.0, 0.3, 0.8).terms(0, 4)
    outs = []
    for k, terms in enumerate([steady, steady, once, steady, steady]):
        v, ref = (guided_velocity({"main": model}, x, 0.25, labels, terms, forward=forward,
                                  generator=torch.Generator().manual_seed(k))
                  for forward in (cache, call_model))
        torch.testing.assert_close(v, ref, rtol=0, atol=0)   # new route scores every replay
        outs.append(v)
    assert capture.captures == 1 and len(cache.graphs) == 1   # the steady shape, at its 2nd call
    assert len(cache.seen) == 2 and cache.pool == ("pool", 1)  # the one-off shape stays eager
    assert not torch.equal(outs[3], outs[4])
    key = next(iter(cache.graphs))
    assert key[-1] == (0.5, 0.5, 0.9, 0.9)                     # per-sample rates are the key


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_on_gpu():
    model = tiny_model().cuda()
    guidance = CFGSparseGuidance(2.0, 1.0, 0.2, 0.7)
    noise, labels = _inputs(model, device="cuda")

    def run(**kw):
        return sample(model, noise, labels, steps=4, guidance=guidance,
                      generator=torch.Generator().manual_seed(5), **kw)
    eager, cache = run(), GraphCache()
    torch.testing.assert_close(run(cuda_graphs=True), eager, rtol=1e-4, atol=1e-4)
    for _ in range(2):                                   # graphs kept across calls: replays
        torch.testing.assert_close(run(cuda_graphs=cache), eager, rtol=1e-4, atol=1e-4)
    assert len(cache.graphs) == 1


def test_sample_cli_passes_compile_and_cuda_graphs(tmp_path, monkeypatch):
    from sgkernels.sampling import cli
    seen = []

    def fake_sample(model, noise, labels, **kw):
        seen.append((kw["compile"], type(kw["cuda_graphs"]).__name__))
        return noise
    monkeypatch.setattr(cli, "sample", fake_sample)
    argv = ["--model", "Tiny/2", "--num", "1", "--steps", "1", "--device", "cpu",
            "--no-progress"]
    cli.main([*argv, "--out", str(tmp_path / "a"), "--compile"])
    cli.main([*argv, "--out", str(tmp_path / "b"), "--cuda-graphs"])
    assert seen == [(True, "bool"), (False, "GraphCache")]


def test_cpu_sampling_keeps_freed_memory():
    import platform

    from sgkernels.runtime.memory import keep_freed_memory
    _run(tiny_model(), None, steps=1)
    assert keep_freed_memory.cache_info().currsize == 1           # set by sample, once
    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_keep_freed_memory_can_be_switched_off(monkeypatch):
    from sgkernels.runtime.memory import keep_freed_memory
    monkeypatch.setenv("SGKERNELS_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory.__wrapped__() is False
