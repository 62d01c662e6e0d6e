"""Test helpers: run a public op and a plain-torch implementation on the same rounded inputs and
judge the op against an fp64 run of the plain-torch implementation (flash-attn style): for the
output and every gradient, err(op) <= 2 * err(plain torch in the same dtype) + tiny atol."""
import torch

# tiny absolute slack, relative to the magnitude of the fp64 result
REL_ATOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _is_data(name, value, keep):
    return isinstance(value, torch.Tensor) and value.is_floating_point() and name not in keep


def _leaves(inputs, dtype, diff, keep=()):
    out = {}
    for name, value in inputs.items():
        if _is_data(name, value, keep):
            value = value.detach().to(dtype).clone().requires_grad_(name in diff)
        out[name] = value
    return out


def _run(fn, inputs, dtype, diff, grad_out, keep):
    leaves = _leaves(inputs, dtype, diff, keep)
    out = fn(**leaves)
    out.backward(grad_out.to(dtype))
    grads = {name: leaves[name].grad for name in diff}
    return out.detach(), grads


def compare(op_fn, torch_fn, inputs, dtype, diff, keep=(), seed=0):
    """Check op_fn against torch_fn on `inputs` (float tensors are given in any precision and
    rounded to `dtype` once, so all three runs see identical values; inputs named in `keep` are
    passed unchanged). `diff` names the inputs whose gradients are checked. Returns the op's
    (output, grads) for further assertions."""
    rounded = {k: (v.to(dtype) if _is_data(k, v, keep) else v) for k, v in inputs.items()}
    gen = torch.Generator().manual_seed(seed)
    probe = torch_fn(**_leaves(rounded, torch.float64, (), keep))
    grad_out = torch.randn(probe.shape, generator=gen, dtype=torch.float64).to(dtype).double()
    grad_out = grad_out.to(probe.device)
    oracle = _run(torch_fn, rounded, torch.float64, diff, grad_out, keep)
    plain = _run(torch_fn, rounded, dtype, diff, grad_out, keep)
    mine = _run(op_fn, rounded, dtype, diff, grad_out, keep)
    assert mine[0].dtype == dtype and mine[0].shape == oracle[0].shape
    _judge("output", mine[0], plain[0], oracle[0], dtype)
    for name in diff:
        assert mine[1][name] is not None, f"no gradient for {name}"
        assert mine[1][name].dtype == dtype and mine[1][name].shape == inputs[name].shape
        _judge(f"d{name}", mine[1][name], plain[1][name], oracle[1][name], dtype)
    return mine


def _judge(what, mine, plain, oracle, dtype):
    err = (mine.double() - oracle).abs().max().item() if oracle.numel() else 0.0
    plain_err = (plain.double() - oracle).abs().max().item() if oracle.numel() else 0.0
    scale = oracle.abs().max().item() if oracle.numel() else 0.0
    bound = 2 * plain_err + REL_ATOL[dtype] * (1.0 + scale)
    assert err <= bound, (
        f"{what} ({dtype}): max error {err:.3g} vs fp64 exceeds 2 x plain torch error "
        f"{plain_err:.3g} + atol ({bound:.3g})"
    )
