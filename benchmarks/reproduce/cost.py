"""Stage `cost`: what one training image and one sampled image cost at this token count.

On the current thread count (the stages run one thread per process), for the routed and the
dense model of the setting (random weights: cost does not depend on them):

    train_ms_per_image   wall time of an AdamW step on a batch of `batch` images / batch
                         (routed: the config's routes at their rates; dense: routes=[])
    sample_s_per_image   wall time of `timed` sampler steps on `batch` images, scaled to a
                         `steps`-step run, per guidance kind: unguided, CFG, SG 0.5/0.9

Medians over `repeats` after one warm-up. The numbers size the experiment (docs/results.md):
training minutes, sweep and final sample counts that fit the CPU budget.
"""
from __future__ import annotations

import statistics
import time

import torch

from sgkernels import presets
from sgkernels.guidance import CFG, SparseGuidance, Unguided
from sgkernels.model import RoutedDiT
from sgkernels.sampling import sample

from .training import PRESETS


def _median_time(fn, repeats: int) -> float:
    fn()                                                   # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(tokens: int, batch: int = 32, steps: int = 40, timed: int = 4,
            repeats: int = 3) -> dict:
    """{"threads", "train_ms_per_image": {routed, dense}, "sample_s_per_image": {...}}."""
    config = presets.get(PRESETS[tokens])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size,
                    generator=gen)
    t, y = torch.rand(batch, generator=gen), torch.arange(batch) % config.num_classes
    out = {"tokens": tokens, "preset": PRESETS[tokens], "threads": torch.get_num_threads(),
           "batch": batch, "steps": steps, "train_ms_per_image": {}, "sample_s_per_image": {}}
    for kind, cfg in (("routed", config), ("dense", config.replace(routes=()))):
        torch.manual_seed(0)
        model = RoutedDiT(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            loss = ((model(x, t, y) - x) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out["train_ms_per_image"][kind] = 1e3 * _median_time(step, repeats) / batch
    model = RoutedDiT(config).eval()
    rules = {"unguided": Unguided(), "cfg": CFG(2.0), "sg-0.5-0.9": SparseGuidance(2.0, 0.5, 0.9)}
    with torch.no_grad():
        for name, guidance in rules.items():
            seconds = _median_time(lambda g=guidance: sample(model, x, y, steps=timed,
                                                             guidance=g), repeats)
            out["sample_s_per_image"][name] = seconds / batch * steps / timed
    return out


def table(cost: dict) -> str:
    lines = [f"{cost['preset']} ({cost['tokens']} tokens), {cost['threads']} thread(s), "
             f"batch {cost['batch']}"]
    lines += [f"  train   {k:10s} {v:8.1f} ms / image"
              for k, v in cost["train_ms_per_image"].items()]
    lines += [f"  sample  {k:10s} {v:8.3f} s / image ({cost['steps']} steps)"
              for k, v in cost["sample_s_per_image"].items()]
    return "\n".join(lines)
