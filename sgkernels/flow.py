"""Flow matching on the straight path, and the training losses of routed / masked DiTs.

Path and target (t = 1 is data, t = 0 is noise; samplers integrate t: 0 -> 1):

    x_t = t * x + (1 - t) * z,      z ~ N(0, I)
    v*  = d x_t / dt = x - z

Time sampling: "uniform" t ~ U(0, 1); "logit-normal" t = sigmoid(m + s * n), n ~ N(0, 1)
(SD3 / SiT practice; m = 0, s = 1 by default).

Losses, per sample, normalised by the number of elements C*H*W of one image and then averaged
over the batch (so that equal local batches give the same mean on 1 or k data-parallel ranks):

    plain FM (dense or TREAD-routed model; routing only changes v_theta):
        L = ||v_theta(x_t, t, y) - v*||^2 / (C H W)

    MaskDiT (the encoder saw only the visible tokens; M marks the pixels of masked tokens,
    Mbar = 1 - M the visible ones, one forward pass on x_t with the mask applied by the model):
        L = ( ||Mbar * (v_theta - v*)||^2 + lambda * (1 - t)^2 * ||M * (v_theta - v*)||^2 ) / (C H W)

Token masks map to pixels per patch: token n = (i, j) on the (H/p) x (W/p) grid covers the pixel
block [i p, (i+1) p) x [j p, (j+1) p).

Label dropout: with probability p the label becomes the null class `num_classes` (CFG training).
"""
import torch

T_SAMPLING = ("uniform", "logit-normal")
MASKDIT_LAMBDA = 0.1   # lambda of the masked-token term, MaskDiT's default (train/args.py uses it)


def interpolate(x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x + (1 - t) z with t [B] broadcast over the image dims."""
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t: expected shape [{x.shape[0]}], got {tuple(t.shape)}")
    if z.shape != x.shape:
        raise ValueError(f"z: expected shape {tuple(x.shape)} like x, got {tuple(z.shape)}")
    tb = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return tb * x + (1 - tb) * z


def target_velocity(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """v* = x - z, the (constant in t) velocity of the straight path."""
    return x - z


def t_from_normal(n: torch.Tensor, mode: str = "uniform", loc: float = 0.0,
                  scale: float = 1.0) -> torch.Tensor:
    """Map standard-normal draws n to times in [0, 1] for the given sampling mode.

    Using normal draws for both modes keeps the random stream identical across modes:
    uniform t = Phi(n) (the normal CDF), logit-normal t = sigmoid(loc + scale * n).
    """
    if mode == "uniform":
        return 0.5 * (1 + torch.erf(n / 2 ** 0.5))
    if mode == "logit-normal":
        return torch.sigmoid(loc + scale * n)
    raise ValueError(f"mode: expected one of {T_SAMPLING}, got {mode!r}")


def sample_t(n: int, mode: str = "uniform", generator: torch.Generator | None = None,
             device=None, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """n times in [0, 1] drawn by `mode` ("uniform" or "logit-normal")."""
    draws = torch.randn(n, generator=generator, device=device)
    return t_from_normal(draws, mode, loc, scale)


def drop_labels(y: torch.Tensor, drop: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Replace y by the null class `num_classes` where the bool mask `drop` is True."""
    if drop.shape != y.shape or drop.dtype != torch.bool:
        raise ValueError(f"drop: expected a bool tensor of shape {tuple(y.shape)}, "
                         f"got {drop.dtype} {tuple(drop.shape)}")
    return torch.where(drop, torch.full_like(y, num_classes), y)


def tokens_to_pixels(token_mask: torch.Tensor, patch_size: int, height: int,
                     width: int) -> torch.Tensor:
    """[B, N] token mask (row-major over the (H/p) x (W/p) grid) -> [B, 1, H, W] pixel mask."""
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size: {patch_size} must divide the image size {height}x{width}")
    gh, gw = height // patch_size, width // patch_size
    if token_mask.dim() != 2 or token_mask.shape[1] != gh * gw:
        raise ValueError(f"token_mask: expected shape [B, {gh * gw}], got {tuple(token_mask.shape)}")
    grid = token_mask.view(-1, 1, gh, gw)
    return grid.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def fm_loss(v_pred: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Plain flow-matching loss: mean over samples of ||v_pred - (x - z)||^2 / (C H W)."""
    if v_pred.shape != x.shape:
        raise ValueError(f"v_pred: expected shape {tuple(x.shape)}, got {tuple(v_pred.shape)}")
    err = (v_pred.float() - target_velocity(x, z).float()).square()
    return err.flatten(1).mean(1).mean()


def maskdit_loss(v_pred: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                 visible: torch.Tensor, lam: float = MASKDIT_LAMBDA) -> torch.Tensor:
    """MaskDiT flow-matching loss (module docstring); `visible` [B, 1|C, H, W] is Mbar (1 = visible)."""
    if v_pred.shape != x.shape:
        raise ValueError(f"v_pred: expected shape {tuple(x.shape)}, got {tuple(v_pred.shape)}")
    if visible.dim() != 4 or visible.shape[0] != x.shape[0] or visible.shape[2:] != x.shape[2:]:
        raise ValueError(f"visible: expected shape [{x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}], "
                         f"got {tuple(visible.shape)}")
    vis = visible.float()
    err = (v_pred.float() - target_velocity(x, z).float()).square()
    numel = x[0].numel()
    seen = (vis * err).flatten(1).sum(1) / numel
    hidden = ((1 - vis) * err).flatten(1).sum(1) / numel
    return (seen + lam * (1 - t.float()).square() * hidden).mean()
