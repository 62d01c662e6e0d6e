"""route_gather and route_scatter for the torch backend; math: sgkernels.ops.routing."""


def route_gather_fwd(x, idx):
    return x.index_select(0, idx)


def route_scatter_fwd(base, y, idx):
    return base.index_copy(0, idx.long(), y)


def route_scatter_bwd(dout, idx):
    return dout.index_fill(0, idx.long(), 0), dout.index_select(0, idx)
