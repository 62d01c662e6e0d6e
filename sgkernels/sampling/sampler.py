"""`sample`: guided flow-matching sampling of a (routed) DiT.

Per step the guidance gives the list of (Branch, coefficient) with non-zero weight
(`sgkernels.guidance`); those branches are evaluated, all branches of one model in one packed
forward (`packing.guided_velocity`), and the solver advances x from noise (t = 0) to data
(t = 1). `generator` fixes the token selections: route scores are drawn from it once per model
evaluation (twice per step for Heun).

Text-conditioned models take `text` (a TextBatch of B prompt features) and `null_text` (the
empty caption, needed by guidance with null branches: CFG, CFG+SG) with labels=None.
"""
from __future__ import annotations

import torch

from ..guidance import Guidance, Unguided
from .packing import guided_velocity
from .solvers import check_solver, integrate


def _check_labels(model, noise, labels):
    if model.config.num_classes == 0:
        if labels is not None:
            raise ValueError("an unconditional model (config.num_classes=0) takes no labels: "
                             "labels must be None")
        return
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"labels must be an int64 tensor [B], got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != noise.shape[:1]:
        raise ValueError(f"labels must be [B] = [{noise.shape[0]}], got {tuple(labels.shape)}")
    if labels.device != noise.device:
        raise ValueError(f"labels ({labels.device}) and noise ({noise.device}) must share a device")


def _check_text(model, noise, labels, text, null_text):
    if not getattr(model.config, "text_conditioned", False):
        if text is not None or null_text is not None:
            raise ValueError("text / null_text need a text-conditioned model "
                             "(config.text_conditioned=True)")
        _check_labels(model, noise, labels)
        return
    if labels is not None:
        raise ValueError("a text-conditioned model takes prompts: labels must be None")
    from sgkernels.model.text import TextBatch
    b = noise.shape[0]
    if not isinstance(text, TextBatch) or text.num_segments != b:
        raise TypeError(f"text must be a TextBatch of {b} prompts (one per noise image), got "
                        f"{getattr(text, 'num_segments', type(text).__name__)}")
    if null_text is not None and (not isinstance(null_text, TextBatch) or
                                  null_text.num_segments not in (1, b)):
        raise TypeError(f"null_text must be None or a TextBatch of 1 or {b} captions")
    for name, value in (("text", text), ("null_text", null_text)):
        if value is not None and value.x.device != noise.device:
            raise ValueError(f"{name} ({value.x.device}) and noise ({noise.device}) must share "
                             f"a device")


def _check_inputs(model, noise, labels, guidance, generator, text, null_text):
    if not callable(model) or not hasattr(model, "config"):
        raise TypeError(f"model must be a callable model with a .config (e.g. RoutedDiT), got "
                        f"{type(model).__name__}")
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor [B, C, H, W], got "
                        f"{getattr(noise, 'dtype', type(noise).__name__)}")
    if noise.dim() != 4:
        raise ValueError(f"noise must be [B, C, H, W], got shape {tuple(noise.shape)}")
    _check_text(model, noise, labels, text, null_text)
    if not isinstance(guidance, Guidance):
        raise TypeError(f"guidance must be None or a sgkernels.guidance object (CFG, "
                        f"AutoGuidance, SparseGuidance, CFGSparseGuidance, Unguided), got "
                        f"{type(guidance).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")


@torch.no_grad()
def sample(model, noise: torch.Tensor, labels: torch.Tensor | None, steps: int = 40,
           solver: str = "euler", guidance: Guidance | None = None,
           generator: torch.Generator | None = None, *, packed: bool = True,
           progress: bool = False, text=None, null_text=None) -> torch.Tensor:
    """Integrate from `noise` (t = 0) to samples (t = 1) in the model's space.

    model: called as model(x, t, y, gamma=list of B host floats, route_scores=[R, B, N]); its
        config.num_classes is the null label. Put it in eval mode yourself.
    noise [B, C, H, W], labels [B] int64 (None for an unconditional model, num_classes=0, which
    takes no guidance with null branches: CFG, CFG+SG); guidance None = unguided dense D(c). The model sees
    x in noise's dtype (e.g. bf16); t, the guidance combination and the solver state are
    float32 (or float64 for float64 noise); the samples come back in noise's dtype.
    packed=False runs every branch in its own forward (same token selections; for checks and
    benchmarks). progress shows a per-step tqdm bar. Text-conditioned models: labels None,
    text = TextBatch of B prompts, null_text = the empty caption (needed by null branches).
    """
    guidance = Unguided() if guidance is None else guidance
    _check_inputs(model, noise, labels, guidance, generator, text, null_text)
    check_solver(solver)
    guidance.validate(steps)                  # every step's settings, before any evaluation
    models = {"main": model, "weak": getattr(guidance, "weak_model", None)}
    weak = models["weak"]
    if weak is not None and not (callable(weak) and hasattr(weak, "config")):
        raise TypeError(f"guidance.weak_model must be a callable model with a .config to sample "
                        f"with it, got {type(weak).__name__}")

    def velocity(x, t, step):
        return guided_velocity(models, x.to(noise.dtype), t, labels, guidance.terms(step, steps),
                               generator, packed=packed, text=text, null_text=null_text)

    state = noise.to(torch.promote_types(noise.dtype, torch.float32))
    return integrate(velocity, state, steps, solver, progress=progress).to(noise.dtype)
