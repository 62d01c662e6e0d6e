import numpy as np
import pytest
from eval_helpers import add_noise, blobs, random_classifier, save_stand_in_inception

from sgkernels.eval.evaluate import evaluate, parse_metrics
from sgkernels.eval.images import ImageSet
from sgkernels.eval.inception import InceptionFeatures


@pytest.fixture(scope="module")
def classifier():
    return random_classifier()


@pytest.fixture(scope="module")
def reference():
    return ImageSet(blobs(300, seed=0), None, "ref")


def _eval(samples, reference, classifier, metrics, **kw):
    kw.setdefault("kid_subset_size", 150)
    kw.setdefault("kid_subsets", 10)
    return evaluate(samples, reference, metrics, classifier=classifier, log=lambda m: None,
                    **kw)["metrics"]


def test_set_against_itself(reference, classifier):
    m = _eval(ImageSet(reference.images, None, "same"), reference, classifier, "cfd,kid,prdc")
    assert abs(m["cfd"]["value"]) < 1e-6
    assert m["precision"]["value"] == m["recall"]["value"] == m["coverage"]["value"] == 1.0
    other = _eval(ImageSet(blobs(300, seed=5), None, "other"), reference, classifier, "kid")
    assert abs(m["kid"]["value"]) < 1e-4 + 0.2 * abs(other["kid"]["value"])


def test_metrics_worsen_monotonically_with_noise(reference, classifier):
    clean = blobs(300, seed=1)
    rows = [_eval(ImageSet(add_noise(clean, s), None, f"noise{s}"), reference, classifier,
                  "cfd,kid,prdc") for s in (0, 25, 60)]
    for name in ("cfd", "kid"):
        values = [r[name]["value"] for r in rows]
        assert values == sorted(values) and values[2] > 3 * max(values[0], 1e-6), (name, values)
    for name in ("precision", "density"):
        values = [r[name]["value"] for r in rows]
        assert values == sorted(values, reverse=True) and values[2] < values[0], (name, values)


def test_accuracy_and_bootstrap_intervals(reference, classifier):
    x = blobs(120, seed=2)
    labels = np.arange(120) % 10
    m = _eval(ImageSet(x, labels, "labelled"), reference, classifier, "acc,cfd,prdc",
              bootstrap=30, seed=1)
    assert m["acc"]["value"] == pytest.approx((classifier.predict(x) == labels).mean())
    for name, r in m.items():
        assert r["low"] <= r["high"] and r["std"] > 0, name
    p = m["acc"]["value"]
    assert m["acc"]["low"] <= p <= m["acc"]["high"]
    assert m["acc"]["std"] == pytest.approx(np.sqrt(p * (1 - p) / 120), rel=0.35)   # binomial


def test_fid_and_inception_space(reference, classifier, tmp_path):
    inception = InceptionFeatures(save_stand_in_inception(tmp_path / "stand.pt", dim=64))
    small = ImageSet(reference.images[:40], None, "ref40")
    run = evaluate(ImageSet(small.images, None, "same"), small, "fid,kid,prdc",
                   space="inception", inception=inception, kid_subset_size=20, kid_subsets=5,
                   log=lambda m: None)
    assert abs(run["metrics"]["fid"]["value"]) < 1e-4
    assert run["metrics"]["precision"]["value"] == 1.0
    assert set(run["info"]["seconds"]) == {"inception_reference", "inception_samples", "metrics"}


def test_reference_features_come_from_the_cache(reference, classifier, monkeypatch):
    _eval(ImageSet(blobs(50, seed=3), None, "a"), reference, classifier, "cfd")
    calls = []
    original = type(classifier).__call__
    monkeypatch.setattr(type(classifier), "__call__",
                        lambda self, x: calls.append(len(x)) or original(self, x))
    _eval(ImageSet(blobs(50, seed=4), None, "b"), reference, classifier, "cfd")
    assert calls == [50]                                  # the samples only


def test_validation(reference, classifier):
    with pytest.raises(ValueError, match="no labels"):
        _eval(reference, reference, classifier, "acc")
    with pytest.raises(ValueError, match="0..9"):
        _eval(ImageSet(blobs(5), np.full(5, 10), "null"), reference, classifier, "acc")
    with pytest.raises(ValueError, match="metrics"):
        parse_metrics("fid,is")
    with pytest.raises(ValueError, match="space"):
        _eval(reference, reference, classifier, "kid", space="clip")
    assert parse_metrics(" fid, kid,fid ") == ("fid", "kid")
