"""FLOPs and model evaluations of a guided sampling run (docs/design.md §8).

A guided step evaluates the branches its guidance lists (`guidance.branches(step, steps)`, each
with `.model` "main"|"weak" and `.gamma`); every branch costs one forward of its model at its own
drop rate, so per image and step

    GFLOPs = mean over steps of Σ_branches forward_gflops(config_of(branch.model), branch.gamma)
    NFE    = mean over steps of (number of branches)

times 2 for Heun (two evaluations per step, with the step's branches). The weak model's config is
`guidance.weak_model.config` (or `guidance.weak_model` itself when it is a config). This module
reads guidance objects by duck typing only; it does not import sgkernels.sampling or guidance.
"""
from __future__ import annotations

import math
from collections import Counter

from sgkernels.model.config import ModelConfig

from .forward import forward_gflops

EVALS_PER_STEP = {"euler": 1, "heun": 2}


def _branches(guidance, steps: int):
    """Per step, the (model, gamma, cond) of every branch evaluated."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if guidance is None:
        return [[("main", 0.0, "cond")] for _ in range(steps)]
    if not callable(getattr(guidance, "branches", None)):
        raise TypeError(f"guidance must be None or expose branches(step, steps), got "
                        f"{type(guidance).__name__}")
    validate = getattr(guidance, "validate", None)
    if callable(validate):
        validate(steps)                     # what sample checks up front (e.g. γ order)
    return [[(b.model, b.gamma, getattr(b, "cond", "cond")) for b in guidance.branches(i, steps)]
            for i in range(steps)]


def _check_branch(configs, model, cond) -> None:
    """Reject what `sample` rejects: a branch of a missing model, a null branch on a model
    without a null condition (num_classes = 0 and no text conditioning)."""
    config = configs.get(model)
    if config is None:
        raise ValueError(f"guidance evaluates model {model!r} but has no weak_model to count "
                         f"it with")
    if cond == "null" and not config.num_classes and not config.text_conditioned:
        raise ValueError(f"guidance has a null branch (model {model!r}), but the model is "
                         f"unconditional (num_classes=0): use guidance without null branches "
                         f"(SparseGuidance, AutoGuidance), not CFG / CFG+SG")


def _evals(solver: str) -> int:
    if solver not in EVALS_PER_STEP:
        raise ValueError(f"solver must be one of {tuple(EVALS_PER_STEP)}, got {solver!r}")
    return EVALS_PER_STEP[solver]


def sampling_nfe(guidance, steps: int, solver: str = "euler") -> float:
    """Mean number of model evaluations per image per step."""
    per_step = _branches(guidance, steps)
    return _evals(solver) * sum(len(b) for b in per_step) / steps


def sampling_gflops(config, guidance, steps: int, solver: str = "euler",
                    convention: str = "paper") -> float:
    """Mean GFLOPs per image per step of sampling `config` with `guidance` for `steps` steps.

    Summed per distinct (model, gamma) as forward_gflops · (evaluations / steps), so CFG on a
    dense model is exactly twice the dense forward.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    evals = _evals(solver)
    weak = getattr(guidance, "weak_model", None)
    configs = {"main": config, "weak": getattr(weak, "config", weak)}
    per_step = _branches(guidance, steps)
    for model, gamma, cond in (b for branches in per_step for b in branches):
        _check_branch(configs, model, cond)
    counts = Counter((m, g) for branches in per_step for m, g, _ in branches)
    total = []
    for (model, gamma), count in counts.items():
        gflops = forward_gflops(configs[model], gamma, convention=convention)
        total.append(gflops * (evals * count / steps))
    return math.fsum(total)
