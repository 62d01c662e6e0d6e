"""The text-conditioned forward and backward through the Triton kernels (uneven caption
segments in varlen attention, negative text positions in axial RoPE, routing gather/scatter),
run in a fresh interpreter with TRITON_INTERPRET=1 (or compiled on a GPU), against the torch
reference backend."""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent

SCRIPT = textwrap.dedent("""
    import torch
    from t2i_helpers import captions, images, random_model, text_config
    from sgkernels import ops
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = text_config()
    model = random_model(cfg).train().to(device)
    x, t = images(cfg, 2)
    x, t = x.to(device).requires_grad_(True), t.to(device)
    text = captions((3, 5)).to(device)
    scores = torch.rand(1, 2, 16, generator=torch.Generator().manual_seed(0)).to(device)
    kw = dict(text=text, gamma=[0.5, 0.25], route_scores=scores)
    with ops.use_backend("torch"):
        ref = model(x, t, None, **kw)
        (gref,) = torch.autograd.grad(ref.square().sum(), x)
    with ops.use_backend("triton"):
        out = model(x, t, None, **kw)
        (g,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g, gref, rtol=1e-4, atol=1e-4)
    print("ok", (out - ref).abs().max().item())
""")


@pytest.mark.interpret
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_text_forward_backward_through_triton_kernels():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parents[1])]))
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")
