"""Kernel backends of sgkernels.ops: `triton` (Triton kernels) and `cuda` (sgkernels._C).

Kernels know nothing of models; each backend exports the functions listed in
docs/contracts.md ("Backends"), with the same names and signatures as sgkernels.ops.reference.
"""
