"""CUDA graphs of the guided step's forwards: capture once per call shape, replay every step.

A guided step at small batch is hundreds of small kernels, so on a GPU the host's launches, not
the arithmetic, set its time. `GraphCache` captures each distinct model call -- the key is the
model, the shapes and dtypes of x, t, y and route_scores, and the per-sample drop rates (which
fix every token count) -- into one `torch.cuda.CUDAGraph` and replays it:

    1st call of a key   eager (compiles / autotunes kernels on first use)
    2nd call            copy the inputs into static buffers, warm up on a side stream,
                        capture the call, replay it
    later calls         copy the inputs into the static buffers, replay

A key seen once (a drop-rate schedule that changes every step) is never captured. Outputs are
copied out of the graph's static output at every replay, so the graphs can share one memory
pool whatever order they replay in. The route scores are an input like x: drawn outside the
graph, so every replay selects new tokens. The small index tensors a forward builds from host
lists (tokens.to_device) are read from host buffers kept alive for the graphs' lifetime.
Graphs live as long as the cache (one `sample` call): a later call captures again, so weights
replaced between calls (`.to()`, a new model) are never read from stale memory.

The capture itself is a parameter (`capture`), so the cache's host logic runs on CPU in tests.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from sgkernels.model.tokens import graph_host_buffers


def capture_cuda_graph(run: Callable[[], torch.Tensor], pool):
    """(replay, static output, pool, host buffers) of `run` captured into a
    torch.cuda.CUDAGraph, after one warm-up call on a side stream (lazy per-stream state:
    cuBLAS workspaces, allocator); the host buffers are what the graph's copies read at every
    replay (model.tokens.graph_host_buffers): keep them as long as the graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with graph_host_buffers() as buffers, torch.cuda.graph(graph, pool=pool):
        out = run()
    return graph.replay, out, graph.pool(), buffers


class _Graph:
    """Static inputs, the captured call and its static output."""

    def __init__(self, module, gamma, inputs, capture, pool):
        self.static = [None if t is None else t.clone() for t in inputs]
        x, t, y, scores = self.static

        def run():
            return module(x, t, y, gamma=gamma, route_scores=scores)
        self.replay, self.out, self.pool, self.host_buffers = capture(run, pool)

    def __call__(self, inputs) -> torch.Tensor:
        for static, t in zip(self.static, inputs):
            if static is not None:
                static.copy_(t)
        self.replay()
        return self.out.clone()


class GraphCache:
    """A forward `(module, x, t, y, gamma, route_scores) -> out` with one graph per call key
    (module docstring). `graphs` maps keys to captured graphs; `capture` defaults to CUDA."""

    def __init__(self, capture=capture_cuda_graph):
        self.capture = capture
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: set[tuple] = set()
        self.pool = None

    @staticmethod
    def key(module, x, t, y, gamma, route_scores) -> tuple:
        def meta(v):
            return None if v is None else (tuple(v.shape), v.dtype, v.device)
        return (id(module), meta(x), meta(t), meta(y), meta(route_scores), tuple(gamma))

    def __call__(self, module, x, t, y, gamma, route_scores) -> torch.Tensor:
        key = self.key(module, x, t, y, gamma, route_scores)
        graph = self.graphs.get(key)
        inputs = (x, t, y, route_scores)
        if graph is None:
            if key not in self.seen:
                self.seen.add(key)
                return module(x, t, y, gamma=gamma, route_scores=route_scores)
            graph = self.graphs[key] = _Graph(module, list(gamma), inputs, self.capture,
                                              self.pool)
            self.pool = graph.pool
        return graph(inputs)
