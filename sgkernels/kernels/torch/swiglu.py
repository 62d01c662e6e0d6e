"""swiglu for the torch backend; math: sgkernels.ops.swiglu. da and db are written in place
(they may be the two halves of one gradient)."""
import torch


def swiglu_fwd(a, b):
    return torch.nn.functional.silu(a.float()).mul_(b).to(a.dtype)


def swiglu_bwd(dout, a, b, da, db):
    af, bf, doutf = a.float(), b.float(), dout.float()
    sig = torch.sigmoid(af)
    db.copy_(doutf * af * sig)
    da.copy_(doutf * bf * sig * (1.0 + af * (1.0 - sig)))
