"""gated_residual for the torch backend; math: sgkernels.ops.residual."""
from .segments import segment_sum


def gated_residual_fwd(x, y, gate, seg):
    out = gate.float().index_select(0, seg).mul_(y).add_(x)     # x + gate[seg]·y in fp32
    return out.to(x.dtype)


def gated_residual_bwd(dout, y, gate, seg):
    """dx is `dout` itself (the identity); callers must not write into it."""
    doutf = dout.float()
    dy = (doutf * gate.float()[seg.long()]).to(y.dtype)
    dgate = segment_sum(doutf * y.float(), seg, gate.shape[0]).to(gate.dtype)
    return dout, dy, dgate
