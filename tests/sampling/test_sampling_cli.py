"""`python -m sgkernels sample` end to end on tiny models: files, seeds, guidance, ranks."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sgkernels import presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFGSparseGuidance
from sgkernels.model import ModelConfig, RoutedDiT, Route, from_checkpoint
from sgkernels.runtime.images import to_uint8
from sgkernels.sampling import cli, io, sample

TINY = presets.get("Tiny/2")


def write_ckpt(path, config=TINY, seed=0):
    torch.manual_seed(seed)
    model = RoutedDiT(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():                   # leave adaLN-Zero so the velocity is not 0
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "step": 0,
                "args": {"model_config": config.to_dict()}}, path)
    return str(path)


def run_cli(out, *extra):
    assert cli.main(["--out", str(out), "--no-progress", "--device", "cpu", *extra]) == 0
    with np.load(out / "samples.npz") as f:
        return f["arr_0"], f["arr_1"]


def test_random_preset_writes_npz_grid_and_costs(tmp_path):
    arr, labels = run_cli(tmp_path, "--model", "Tiny/2", "--num", "5", "--batch", "2",
                          "--steps", "2", "--guidance", "sg", "--scale", "2", "--labels", "1,2")
    assert arr.dtype == np.uint8 and arr.shape == (5, 28, 28, 1)
    assert labels.tolist() == [1, 2, 1, 2, 1]
    # a freshly initialised RoutedDiT is adaLN-Zero (velocity 0): the samples are the noise of
    # batch j, drawn from seed·2^32 + j and mapped by round((x + 1)·127.5)
    noise = [torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(j))
             for j, n in enumerate((2, 2, 1))]
    np.testing.assert_array_equal(arr, to_uint8(torch.cat(noise)))
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 30 + 2, 2 * 30 + 2)              # 5 images: 3 columns, 2 rows
    info = json.loads((tmp_path / "sampling.json").read_text())
    assert info["nfe_per_step"] == 2.0
    assert info["gflops_per_image_step"] == sampling_gflops(
        TINY, CFGSparseGuidance(2.0, 0.0, 0.5, 0.9), 2)         # w_cfg 0 = SG's two branches


def test_checkpoint_guided_sampling_matches_the_api(tmp_path):
    main_ckpt = write_ckpt(tmp_path / "a.pt", seed=0)
    weak_ckpt = write_ckpt(tmp_path / "b.pt", seed=1)
    arr, labels = run_cli(tmp_path, "--ckpt", main_ckpt, "--weak-ckpt", weak_ckpt, "--num", "3",
                          "--batch", "3", "--steps", "2", "--solver", "heun", "--seed", "5",
                          "--guidance", "cfg+sg", "--cfg-scale", "1.5", "--sg-scale", "0.5",
                          "--rule", "inner", "--gamma-strong", "0.25",
                          "--gamma-weak", "cosine:0.75:0.5", "--interval", "0,0.6")
    assert labels.tolist() == [0, 1, 2]                          # all classes by default
    model, weak = from_checkpoint(main_ckpt), from_checkpoint(weak_ckpt)
    guidance = cli.build_guidance(cli.parser().parse_args(
        ["--ckpt", "x", "--guidance", "cfg+sg", "--cfg-scale", "1.5", "--sg-scale", "0.5",
         "--rule", "inner", "--gamma-strong", "0.25", "--gamma-weak", "cosine:0.75:0.5",
         "--interval", "0,0.6"]), weak)
    gen = torch.Generator().manual_seed(5 * 2 ** 32)
    noise = torch.randn(3, 1, 28, 28, generator=gen)
    x = sample(model, noise, torch.arange(3), steps=2, solver="heun", guidance=guidance,
               generator=gen)
    np.testing.assert_array_equal(arr, to_uint8(x))
    assert (arr != to_uint8(noise)).any(), "the trained-like model moves the samples"


def test_ranks_partition_batches_and_merge_in_order(tmp_path):
    ckpt = write_ckpt(tmp_path / "m.pt")
    args = cli.parser().parse_args(["--ckpt", ckpt, "--num", "5", "--batch", "2", "--steps", "1",
                                    "--no-progress", "--guidance", "sg", "--scale", "2"])
    model = from_checkpoint(ckpt)
    guidance = cli.build_guidance(args)
    labels = cli._image_labels(args, 10)
    single = cli._sample_rank(args, model, guidance, labels, 0, 1, "cpu")
    parts = [cli._sample_rank(args, model, guidance, labels, r, 2, "cpu") for r in (0, 1)]
    assert parts[0][2].tolist() == [0, 1, 4] and parts[1][2].tolist() == [2, 3]
    for r, part in enumerate(parts):
        np.savez(io.part_path(tmp_path, r), *part)
    merged, ys = io.merge_parts(tmp_path, 2)
    np.testing.assert_array_equal(merged, single[0])
    np.testing.assert_array_equal(ys, single[1])
    assert not list(tmp_path.glob("samples_part*"))
    assert cli._sample_rank(args, model, guidance, labels, 3, 4, "cpu") is None   # no batch left


def test_latent_models_write_float_latents(tmp_path):
    config = ModelConfig(input_size=8, patch_size=2, in_channels=4, num_classes=3, depth=2,
                         dim=32, heads=2, routes=(Route(1, 1, 0.5),))
    ckpt = write_ckpt(tmp_path / "l.pt", config)
    assert cli.main(["--ckpt", ckpt, "--num", "2", "--steps", "1", "--out", str(tmp_path),
                     "--no-progress", "--device", "cpu"]) == 0
    with np.load(tmp_path / "latents.npz") as f:
        assert f["arr_0"].dtype == np.float32 and f["arr_0"].shape == (2, 4, 8, 8)
    assert not (tmp_path / "samples.npz").exists() and not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--guidance", "cfg"], "needs --scale"),
    (["--guidance", "cfg+sg", "--cfg-scale", "2"], "needs --sg-scale"),
    (["--guidance", "autoguidance", "--scale", "2"], "needs --weak-ckpt"),
    (["--guidance", "sg", "--scale", "2", "--gamma-strong", "0.9", "--gamma-weak", "0.5"],
     "allow_inverted"),
    (["--guidance", "sg", "--scale", "2", "--gamma-weak", "cos:1:0"], "cannot parse schedule"),
    (["--interval", "0.5"], "expected 'lo,hi'"),
    (["--num", "0"], "--num must be >= 1"),
    (["--guidance", "sg", "--scale", "2", "--gamma", "0.5"], "uses --gamma-strong"),
])
def test_argument_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        cli.main(["--model", "Tiny/2", "--out", str(tmp_path), "--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="labels must be in"):
        cli.main(["--model", "Tiny/2", "--labels", "3,10", "--out", str(tmp_path),
                  "--device", "cpu"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    ckpt = write_ckpt(tmp_path / "m.pt")
    common = ["sample", "--ckpt", ckpt, "--num-samples", "5", "--batch", "2", "--steps", "1",
              "--guidance", "sg", "--scale", "2", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(free_port()), "-m", "sgkernels", *common,
                    "--out", str(tmp_path / "two")], check=True, env=env, timeout=300)
    assert cli.main([*common[1:], "--out", str(tmp_path / "one")]) == 0
    with np.load(tmp_path / "two" / "samples.npz") as two, \
            np.load(tmp_path / "one" / "samples.npz") as one:
        np.testing.assert_array_equal(two["arr_0"], one["arr_0"])
        np.testing.assert_array_equal(two["arr_1"], one["arr_1"])
    assert json.loads((tmp_path / "two" / "sampling.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("name", ["hpsv3", "geneval"])
def test_paper_help_states_exactly_the_flags_it_sets(name):
    p = cli.parser()
    flags = cli.paper_flags(name)
    assert " ".join(p.format_help().split()).count(flags) >= 1     # --help and the docstring
    base = ["--model", "Tiny/2"]
    by_paper = vars(cli.parse(cli.parser(), base + ["--paper", name]))
    by_flags = vars(cli.parse(cli.parser(), base + flags.split()))
    by_paper.pop("paper"), by_flags.pop("paper")
    assert by_paper == by_flags
    if name == "geneval":                                    # one ω in the paper: both weights
        assert by_paper["cfg_scale"] == by_paper["sg_scale"] == 2.5
