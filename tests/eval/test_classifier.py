import numpy as np
import pytest
import torch
from eval_helpers import blobs

from sgkernels.eval import classifier as clf
from sgkernels.eval.images import ImageSet, load_reference


def _labelled_blobs(n, seed=0):
    """Blobs labelled by which half of the image their rectangle centre lies in (learnable)."""
    x = blobs(n, seed)
    bright = x[..., 0] > 100
    cols = np.where(bright.any(1), np.arange(28)[None], 0).sum(1) / bright.any(1).sum(1)
    return x, (cols > 13.5).astype(np.int64)


def test_training_is_deterministic_per_seed():
    x, y = _labelled_blobs(64)
    a = clf.train_classifier(x, y, epochs=1, seed=3, batch_size=32)
    b = clf.train_classifier(x, y, epochs=1, seed=3, batch_size=32)
    c = clf.train_classifier(x, y, epochs=1, seed=4, batch_size=32)
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_training_learns_a_learnable_task():
    x, y = _labelled_blobs(384)
    model = clf.train_classifier(x, y, epochs=2, seed=0, batch_size=64)
    xt, yt = _labelled_blobs(300, seed=1)
    assert clf.accuracy(model, xt, yt) > 0.85


def test_input_crops_padding_and_greys_colour():
    x = blobs(3)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    torch.testing.assert_close(clf.classifier_input(padded), clf.classifier_input(x))
    torch.testing.assert_close(clf.classifier_input(np.repeat(x, 3, -1)), clf.classifier_input(x))
    t = clf.classifier_input(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1).repeat(28, 1)
                             .repeat(28, 2))
    assert t.shape == (2, 1, 28, 28) and t[0].max() == -1 and t[1].min() == 1


def test_features_predictions_and_key():
    torch.manual_seed(0)
    model = clf.FashionCNN().eval()
    ex = clf.ClassifierFeatures(model)
    x = blobs(5)
    f = ex(x)
    assert f.shape == (5, 128) and f.dtype == np.float32 and (f >= 0).all()
    logits = model(clf.classifier_input(x)).detach()
    np.testing.assert_array_equal(ex.predict(x), logits.argmax(1).numpy())
    with torch.no_grad():
        model.head.bias += 1
    assert clf.ClassifierFeatures(model).key != ex.key


def test_cached_classifier_is_loaded_not_retrained(private_cache, monkeypatch):
    x, y = _labelled_blobs(200)
    small = ImageSet(x, y, "blobs")
    monkeypatch.setattr(clf, "load_reference", lambda name: small)
    trained = clf.train_classifier(x, y, epochs=1, batch_size=64)
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: trained)
    model, info = clf.load_classifier(seed=0, log=None)
    assert (private_cache / "classifier" / f"{clf.ARCH}-seed0.pt").exists()
    assert info["test_accuracy"] == clf.accuracy(trained, x, y) and info["epochs"] == clf.EPOCHS
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again, info2 = clf.load_classifier(seed=0, log=None)
    assert info2 == info
    for name, t in model.state_dict().items():
        assert torch.equal(t, again.state_dict()[name])


def test_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        clf.train_classifier(blobs(4), np.array([0, 1, 2, 10]), epochs=1)


def test_fashion_mnist_subset_trains_above_chance():
    try:
        data = load_reference("fashion-mnist-test")      # 10k images load faster than 60k
    except FileNotFoundError as e:
        pytest.skip(str(e))
    x, y = data.images, data.labels
    model = clf.train_classifier(x[:1280], y[:1280], epochs=1, batch_size=64)
    assert clf.accuracy(model, x[5000:6000], y[5000:6000]) > 0.6
