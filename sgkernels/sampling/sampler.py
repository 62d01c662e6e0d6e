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

import os

import torch

from ..guidance import Guidance, Unguided
from ..runtime.memory import keep_freed_memory
from .graphs import GraphCache
from .packing import call_model, guided_velocity, null_branch_error
from .solvers import NonFiniteTracker, check_solver, integrate

LABEL_DTYPES = (torch.int64, torch.int32)


def _debug() -> bool:
    return os.environ.get("SGKERNELS_DEBUG") == "1"


def _check_labels(model, noise, labels):
    if model.config.num_classes == 0:
        if labels is not None:
            raise ValueError("an unconditional model (config.num_classes=0) takes no labels: "
                             "labels must be None")
        return
    if not isinstance(labels, torch.Tensor) or labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels must be an int64 or int32 tensor [B], got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != noise.shape[:1]:
        raise ValueError(f"labels must be [B] = [{noise.shape[0]}], got {tuple(labels.shape)}")
    if labels.device != noise.device:
        raise ValueError(f"labels ({labels.device}) and noise ({noise.device}) must share a device")
    k = model.config.num_classes
    if labels.numel() and (labels.device.type == "cpu" or _debug()):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > k:
            raise ValueError(f"labels must be in [0, {k}] ({k} = the null class), got "
                             f"[{lo}, {hi}]")


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


def _check_model(model, noise, name: str) -> None:
    """dtype, device and image shape of one model against the noise (host metadata only)."""
    check_dtype = getattr(model, "check_dtype", None)
    if callable(check_dtype):
        check_dtype()                           # RoutedDiT: fp32 / bf16 / fp16 parameters
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    if first is not None and first.device != noise.device:
        raise ValueError(f"noise ({noise.device}) must be on the device of {name} "
                         f"({first.device})")
    c = model.config
    expected = tuple(getattr(c, k, None) for k in ("in_channels", "input_size", "input_size"))
    if None not in expected and tuple(noise.shape[1:]) != expected:
        raise ValueError(f"noise must be [B, {', '.join(map(str, expected))}] for {name}, got "
                         f"{list(noise.shape)}")


def _check_weak(model, weak) -> None:
    if not (callable(weak) and hasattr(weak, "config")):
        raise TypeError(f"guidance.weak_model must be a callable model with a .config to sample "
                        f"with it, got {type(weak).__name__}")
    for key in ("in_channels", "input_size", "num_classes", "text_conditioned", "text_dim"):
        a, b = getattr(model.config, key, None), getattr(weak.config, key, None)
        if a is not None and b is not None and a != b:
            raise ValueError(f"guidance.weak_model does not match the model: config.{key} is "
                             f"{b}, the model's {a}")


def _check_noise(noise) -> None:
    """Non-finite noise makes its whole image NaN: one reduction (one sync on CUDA)."""
    finite = torch.isfinite(noise.reshape(noise.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"noise holds NaN or inf in image {bad[0]} ({len(bad)} of "
                         f"{noise.shape[0]} images): that image would come out all NaN; "
                         f"noise must be finite (e.g. torch.randn)")


def _check_branches(models, guidance, steps, labels, text, null_text) -> None:
    """Every branch of every step can run: its model exists, null branches have a null
    condition. Up front, so a bad combination fails before the first evaluation."""
    seen = dict.fromkeys(b for i in range(steps) for b in guidance.branches(i, steps))
    for branch in seen:
        if models.get(branch.model) is None:
            raise ValueError(f"branch {branch} needs model {branch.model!r}, but none was "
                             f"given (pass weak_model to the guidance)")
        if branch.cond == "null":
            if text is None and labels is None:
                raise null_branch_error(branch, text_model=False)
            if text is not None and null_text is None:
                raise null_branch_error(branch, text_model=True)


def _compile_options(models, compile) -> dict | None:
    """torch.compile options of compile=True / a dict, or None; every model can compile."""
    if compile is False:
        return None
    if compile is not True and not isinstance(compile, dict):
        raise TypeError(f"compile must be a bool or a dict of torch.compile options, got "
                        f"{type(compile).__name__}")
    for name, module in models.items():
        if module is not None and not callable(getattr(module, "compile_blocks", None)):
            raise TypeError(f"compile needs models with compile_blocks (RoutedDiT); the "
                            f"{name} model is a {type(module).__name__}")
    return {} if compile is True else dict(compile)


def _check_graphs(cuda_graphs, noise, text) -> None:
    if not isinstance(cuda_graphs, (bool, GraphCache)):
        raise TypeError(f"cuda_graphs must be a bool or a sampling.graphs.GraphCache, got "
                        f"{type(cuda_graphs).__name__}")
    if cuda_graphs and noise.device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs CUDA tensors, got noise on {noise.device}")
    if cuda_graphs and text is not None:
        raise ValueError("cuda_graphs=True: text-conditioned models are not supported (their "
                         "captions vary in length); sample them without CUDA graphs")


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
           progress: bool = False, text=None, null_text=None, compile: bool | dict = False,
           cuda_graphs: bool | GraphCache = False) -> torch.Tensor:
    """Integrate the guided flow dx/dt = v(x, t) from `noise` (t = 0) to samples (t = 1).

    v is the guidance's combination Σ_k a_k · D_k of its branches at each step
    (`guidance.terms`). Each model sees x in its own parameter dtype (fp32, bf16 or fp16; a
    model without parameters: noise's dtype); t, the guidance combination and the solver state
    are fp32 (fp64 for fp64 noise). All bad arguments are rejected up front, before any model
    evaluation (docs/contracts.md, input policy). On CPU, glibc's malloc is set to keep freed
    memory for reuse (runtime.memory.keep_freed_memory, process-wide): otherwise every large
    activation of a packed forward page-faults afresh.

    Args:
        model: a callable model with a `.config` (e.g. RoutedDiT; put it in eval mode
            yourself), called as model(x, t, y, gamma=list of B host floats,
            route_scores=[R, B, N]) (+ text=); config.num_classes is the null label.
        noise: [B, C, H, W] of any float dtype (C = config.in_channels, H = W =
            config.input_size), finite, on the model's device.
        labels: [B] int64 or int32 in [0, num_classes], on noise's device; None for an
            unconditional model (num_classes = 0, which takes no guidance with null branches:
            CFG, CFG+SG) and for a text-conditioned model.
        steps: the number of solver steps, an int >= 1.
        solver: "euler" or "heun".
        guidance: a `sgkernels.guidance` rule (Unguided, CFG, AutoGuidance, SparseGuidance,
            CFGSparseGuidance); None = Unguided(), the dense D(c).
        generator: torch.Generator of the token selections: route scores are drawn from it once
            per model evaluation (twice per step for Heun); None: the default RNG.
        packed: True evaluates all branches of one model in ONE packed forward per step;
            False one forward per branch, with the same token selections (checks, benchmarks).
        progress: show a per-step tqdm bar.
        text: a TextBatch of B prompts for a text-conditioned model, else None.
        null_text: a TextBatch of 1 or B empty captions, needed by null branches (text models).
        compile: True compiles the transformer blocks of every model in place
            (`RoutedDiT.compile_blocks`: torch.compile with dynamic token counts, so a run
            compiles a bounded number of graphs whatever its drop rates; later calls reuse
            them); a dict passes torch.compile options (e.g. {"mode": "max-autotune"}).
            Outputs equal eager ones within float tolerance.
        cuda_graphs: on CUDA, replay one captured CUDA graph per guided-step shape (batch and
            drop rates) from the second step of that shape on (`sampling.graphs`). True: the
            graphs live for this call; a `GraphCache`: its graphs serve every call given it
            (batches of one run; do not replace the models' parameters meanwhile). Not for
            text-conditioned models.

    Returns:
        samples [B, C, H, W] in noise's dtype, on noise's device.

    Raises:
        TypeError: model not a callable with a .config; noise not a float tensor; labels not
            an int64 / int32 tensor; text / null_text not TextBatches of B (1 or B) captions;
            guidance not a guidance rule; generator not a torch.Generator; weak_model not a
            callable model with a .config; a model's parameters not fp32 / bf16 / fp16;
            compile not a bool or dict, or given for a model without compile_blocks;
            cuda_graphs not a bool or GraphCache.
        ValueError: noise not [B, C, H, W] of the model or not on its device; labels not [B],
            not on noise's device or outside [0, num_classes] (checked on CPU, and on CUDA
            under SGKERNELS_DEBUG=1); labels given to an unconditional or text model; text
            given to a model without text conditioning; an unknown solver; steps not a
            positive int; guidance.validate(steps) fails; a branch whose model is missing or
            whose null condition is missing (an unconditional model, no null_text); a
            weak_model of another config (image size, channels, classes, text); noise not
            finite (one device sync on CUDA); cuda_graphs=True on non-CUDA noise or with
            text.
        FloatingPointError: at the end, when an image became NaN / inf, naming the first such
            image and the step (tracked on the device without a per-step sync).
    """
    guidance = Unguided() if guidance is None else guidance
    _check_inputs(model, noise, labels, guidance, generator, text, null_text)
    check_solver(solver)
    guidance.validate(steps)                  # every step's settings, before any evaluation
    models = {"main": model, "weak": getattr(guidance, "weak_model", None)}
    _check_model(model, noise, "the model")
    if models["weak"] is not None:
        _check_weak(model, models["weak"])
        _check_model(models["weak"], noise, "guidance.weak_model")
    _check_branches(models, guidance, steps, labels, text, null_text)
    options = _compile_options(models, compile)
    _check_graphs(cuda_graphs, noise, text)
    _check_noise(noise)
    if noise.device.type == "cpu":
        keep_freed_memory()
    if options is not None:
        for module in {id(m): m for m in models.values() if m is not None}.values():
            module.compile_blocks(**options)
    forward = call_model
    if cuda_graphs:
        forward = cuda_graphs if isinstance(cuda_graphs, GraphCache) else GraphCache()

    def velocity(x, t, step):
        return guided_velocity(models, x, t, labels, guidance.terms(step, steps), generator,
                               packed=packed, text=text, null_text=null_text,
                               input_dtype=noise.dtype, forward=forward)

    state = noise.to(torch.promote_types(noise.dtype, torch.float32))
    tracker = NonFiniteTracker(noise.shape[0], noise.device)
    out = integrate(velocity, state, steps, solver, progress=progress, on_step=tracker.update)
    failed = tracker.first_bad()              # the one host sync of the check
    if failed is not None:
        image, step, count = failed
        raise FloatingPointError(
            f"sample: image {image} became NaN or inf at step {step} of {steps} "
            f"(t {step / steps:.4g} -> {(step + 1) / steps:.4g}) from finite noise ({count} of "
            f"{noise.shape[0]} images non-finite): lower the guidance scale or check the "
            f"model's weights (SGKERNELS_DEBUG=1 checks every forward's inputs)")
    return out.to(noise.dtype)
