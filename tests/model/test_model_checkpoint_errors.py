"""Checkpoint round trip and clear errors for bad inputs."""
import pytest
import torch
from model_helpers import inputs, randomize_, small_config

from sgkernels.model import RoutedDiT, from_checkpoint


def _save(path, **overrides):
    cfg = small_config("llama")
    raw, ema = randomize_(RoutedDiT(cfg), seed=1), randomize_(RoutedDiT(cfg), seed=2)
    ckpt = {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": {"state": {}},
            "args": {"model_config": cfg.to_dict(), "lr": 1e-4}, "step": 10}
    ckpt.update(overrides)
    torch.save({k: v for k, v in ckpt.items() if v is not None}, path)
    return raw, ema


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    raw, ema = _save(path)
    x, t, y = inputs(raw.config)
    for use_ema, ref in [(True, ema), (False, raw)]:
        loaded = from_checkpoint(path, ema=use_ema)
        assert loaded.config == ref.config and not loaded.training
        torch.testing.assert_close(loaded(x, t, y), ref.eval()(x, t, y), rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        from_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "partial.pt"
    _save(path, ema=None, step=None)
    with pytest.raises(ValueError, match=r"\['ema', 'step'\]"):
        from_checkpoint(path)
    _save(path, args={"lr": 1e-4})
    with pytest.raises(ValueError, match="model_config"):
        from_checkpoint(path)


@pytest.fixture(scope="module")
def model():
    return RoutedDiT(small_config("llama")).train()


@pytest.mark.parametrize("make, err, match", [
    (lambda x, t, y: (x[:, :1], t, y), ValueError, r"x must be \[B, 2, 8, 8\]"),
    (lambda x, t, y: (x[0], t, y), ValueError, r"x must be \[B"),
    (lambda x, t, y: (x.long(), t, y), TypeError, "floating-point"),
    (lambda x, t, y: (x, t[:, None], y), ValueError, r"t must be \[B\]"),
    (lambda x, t, y: (x, t[:2], y), ValueError, r"t must be \[B\]"),
    (lambda x, t, y: (x, t, y.float()), TypeError, "int64"),
    (lambda x, t, y: (x, t, y[:2]), ValueError, r"y must be \[B\]"),
    (lambda x, t, y: (x, t, torch.full_like(y, 6)), ValueError, r"\[0, 5\]"),
    (lambda x, t, y: (x, t, torch.full_like(y, -1)), ValueError, r"\[0, 5\]"),
])
def test_bad_inputs(model, make, err, match):
    with pytest.raises(err, match=match):
        model(*make(*inputs(model.config)))


@pytest.mark.parametrize("gamma, err, match", [
    (1.0, ValueError, r"\[0, 1\)"),
    (-0.1, ValueError, r"\[0, 1\)"),
    (torch.tensor([0.1, 0.2]), ValueError, "one rate per sample"),
    (torch.tensor([0.1, 1.5, 0.2]), ValueError, r"gamma\[1\]"),
    (torch.tensor([1, 0, 0]), ValueError, "float tensor"),
    ("0.5", TypeError, "gamma must be"),
])
def test_bad_gamma(model, gamma, err, match):
    with pytest.raises(err, match=match):
        model(*inputs(model.config), gamma=gamma)


def test_bad_route_scores(model):
    with pytest.raises(ValueError, match=r"route_scores must be \[R, B, N\] = \[1, 3, 16\]"):
        model(*inputs(model.config), route_scores=torch.rand(1, 3, 15))
