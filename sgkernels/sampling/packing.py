"""Evaluate the branches of one guided step and combine them: v = Σ_k a_k · D_k(x_t, t).

Branches on the same model run in ONE packed forward: the batch of B images is repeated once
per branch (segments of different lengths and labels), with per-sample gamma rates (host
floats, so no device sync)

    x_packed = [x; x; …]    t_packed = [t; t; …]    y_packed = [c or ∅ per branch]
    gamma    = [γ_1]*B + [γ_2]*B + …                 (Python floats)

and the token selections are fixed by route scores drawn once per evaluation and model,
`rand([R, K·B, N], generator)`: branch k of the packed call uses columns k·B … (k+1)·B, and
`packed=False` evaluates each branch alone with exactly that slice, so both modes select the
same tokens and agree up to float reassociation.

Text-conditioned models (T2I) get `text` (a TextBatch of the B prompts) instead of labels: a
"cond" branch uses the prompts, a "null" branch `null_text` (the empty caption, one segment
used for every image, or B segments), and the branches of one model are packed as
text = [prompts; null; …] alongside the images, each caption in its image's segment.
"""
from __future__ import annotations

import torch

from sgkernels.model.routing import uniform_scores


def route_score_shape(config, batch: int) -> tuple[int, int, int]:
    """[R, B, N] of the model's route scores: one row of N token scores per route and sample."""
    routes = len(config.routes)
    if getattr(config, "decoder_depth", 0):
        routes = 1  # MaskDiT: one random mask at the encoder input
    return routes, batch, config.num_tokens


def draw_route_scores(config, batch: int, generator, device) -> torch.Tensor:
    """Uniform route scores [R, batch, N] on `device` from `generator` (default RNG when None):
    drawn on the generator's device, copied without a host sync (routing.uniform_scores)."""
    return uniform_scores(route_score_shape(config, batch), generator, device)


def model_dtype(module, fallback: torch.dtype) -> torch.dtype:
    """The dtype `module` takes x in: its floating parameters' dtype (RoutedDiT.dtype), or
    `fallback` for a model without parameters (duck-typed callables)."""
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    params = getattr(module, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return fallback


def null_branch_error(branch, text_model: bool) -> ValueError:
    """Why `branch` (cond "null") cannot run: the model has no null label / caption."""
    if text_model:
        return ValueError(f"branch {branch} needs the null caption: pass null_text "
                          f"(e.g. TextEncoder.null()) to sample with this guidance")
    return ValueError(f"branch {branch} needs a null label, but the model is unconditional "
                      f"(num_classes=0): use guidance without null branches (SparseGuidance, "
                      f"AutoGuidance), not CFG / CFG+SG")


def _group_by_model(terms, models):
    """{id(module): (module, [term index, …])} in first-seen order."""
    groups: dict[int, tuple] = {}
    for k, (branch, _) in enumerate(terms):
        module = models.get(branch.model)
        if module is None:
            raise ValueError(f"branch {branch} needs model {branch.model!r}, but none was given "
                             f"(pass weak_model to the guidance)")
        groups.setdefault(id(module), (module, []))[1].append(k)
    return list(groups.values())


def _branch_conditions(terms, index, labels, text, null_text, batch, num_classes):
    """Per branch of `index`: (y, text) -- labels or the null class, or prompts or null text."""
    if text is None and labels is None:             # unconditional model (num_classes = 0)
        for k in index:
            if terms[k][0].cond == "null":
                raise null_branch_error(terms[k][0], text_model=False)
        return [(None, None) for _ in index]
    if text is None:
        null = torch.full_like(labels, num_classes)
        return [(labels if terms[k][0].cond == "cond" else null, None) for k in index]
    out = []
    for k in index:
        if terms[k][0].cond == "cond":
            out.append((None, text))
            continue
        if null_text is None:
            raise null_branch_error(terms[k][0], text_model=True)
        out.append((None, null_text.expand(batch) if null_text.num_segments == 1 else null_text))
    return out


def call_model(module, x, t, y, gamma, route_scores, **extra) -> torch.Tensor:
    """One forward of a branch group: module(x, t, y, gamma=..., route_scores=..., **extra)."""
    return module(x, t, y, gamma=gamma, route_scores=route_scores, **extra)


def guided_velocity(models: dict, x: torch.Tensor, t: float, labels: torch.Tensor | None, terms,
                    generator=None, packed: bool = True, text=None,
                    null_text=None, input_dtype: torch.dtype | None = None,
                    forward=call_model) -> torch.Tensor:
    """Σ_k a_k · D_k(x, t) over terms [(Branch, a_k)]; `models` maps "main"/"weak" to modules.

    Branches that resolve to the same module share one forward (packed=True) or run one by one
    with the same route-score slices (packed=False). x goes to each model in that model's
    dtype (model_dtype; for a model without parameters input_dtype, default x's dtype); t and
    the sum are float32 or better (x's dtype promoted), the returned dtype. text /
    null_text (TextBatch): prompts and null caption of a text-conditioned model (labels None).
    forward: runs each forward, with call_model's signature (graphs.GraphCache replays CUDA
    graphs).
    """
    batch = x.shape[0]
    acc = torch.promote_types(x.dtype, torch.float32)
    outputs: list[torch.Tensor | None] = [None] * len(terms)
    for module, index in _group_by_model(terms, models):
        config = module.config
        xm = x.to(model_dtype(module, x.dtype if input_dtype is None else input_dtype))
        conds = _branch_conditions(terms, index, labels, text, null_text, batch,
                                   config.num_classes)
        gammas = [[float(terms[k][0].gamma)] * batch for k in index]   # host floats: no sync
        scores = draw_route_scores(config, len(index) * batch, generator, x.device)
        tt = torch.full((batch,), t, dtype=acc, device=x.device)
        if packed:
            n = len(index)
            if text is None:
                y = None if labels is None else torch.cat([c[0] for c in conds])
                extra = {}
            else:
                y, extra = None, {"text": type(text).cat([c[1] for c in conds])}
            out = forward(module, xm.repeat(n, *([1] * (x.dim() - 1))), tt.repeat(n), y,
                          sum(gammas, []), scores, **extra)
            chunks = out.split(batch)
        else:
            chunks = [forward(module, xm, tt, conds[j][0], gammas[j],
                              scores[:, j * batch:(j + 1) * batch],
                              **({} if text is None else {"text": conds[j][1]}))
                      for j in range(len(index))]
        for k, chunk in zip(index, chunks):
            outputs[k] = chunk
    v = torch.zeros(x.shape, dtype=acc, device=x.device)
    for (_, coef), out in zip(terms, outputs):
        v.add_(out.to(acc), alpha=coef)
    return v
