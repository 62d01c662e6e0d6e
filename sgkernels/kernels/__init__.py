"""The three backends of sgkernels.ops, side by side, one file per op in each:
`torch` (plain PyTorch: the CPU path and the test oracle), `triton` (Triton kernels) and `cuda`
(a wrapper over the extension sgkernels._C built from csrc/).

Kernels know nothing of models; each backend exports the functions listed in
docs/contracts.md ("Backends"), with the same names and signatures as sgkernels.kernels.torch.
Two more backends run varlen_attention alone, over libraries: `flash` (FlashAttention-3 / -2)
and `torch_varlen` (torch.nn.attention.varlen), sharing library_attention.py.
"""
