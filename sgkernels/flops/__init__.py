"""Analytic FLOP counts per image (docs/design.md §8).

Paper convention: multiply-accumulates of every linear/conv layer, attention score and value
products excluded (SiT-XL/2, 256 tokens, dense: 114.42 GFLOPs). convention="full" adds them.
"""
from .forward import forward_gflops
from .sampling import sampling_gflops, sampling_nfe

__all__ = ["forward_gflops", "sampling_gflops", "sampling_nfe"]
