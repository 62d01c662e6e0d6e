"""ADM-format reference batches (the .npz of ADM's evaluator): arr_0 uint8 images plus the
Inception statistics mu / sigma, or the statistics alone; fid from them equals fid from the
images, kid / prdc need the images (sgkernels/eval/images.py, evaluate.py, docs/eval.md)."""
import numpy as np
import pytest
from eval_helpers import blobs, save_stand_in_inception

from sgkernels.eval import evaluate, gaussian_stats, load_reference
from sgkernels.eval.cli import main
from sgkernels.eval.inception import InceptionFeatures


@pytest.fixture
def inception(tmp_path, monkeypatch):
    path = save_stand_in_inception(tmp_path / "stand.pt", dim=48)
    monkeypatch.setenv("SGKERNELS_INCEPTION", path)
    return InceptionFeatures(path)


@pytest.fixture
def batches(tmp_path, inception):
    """(samples, plain reference, ADM batch with images and stats, stats-only ADM batch)."""
    images, labels = blobs(40, seed=0, size=16, channels=3), np.arange(40) % 4
    mu, sigma = gaussian_stats(inception(images))
    paths = [tmp_path / n for n in ("samples.npz", "ref.npz", "adm.npz", "stats.npz")]
    np.savez(paths[0], blobs(30, seed=1, size=16, channels=3))
    np.savez(paths[1], images, labels)
    np.savez(paths[2], images, labels, mu=mu, sigma=sigma, mu_s=mu[:8], sigma_s=sigma[:8, :8])
    np.savez(paths[3], mu=mu, sigma=sigma)
    return paths


def fid(samples, reference, inception):
    result = evaluate(load_reference(str(samples)), load_reference(str(reference)), "fid",
                      inception=inception, log=lambda m: None)
    return result["metrics"]["fid"]["value"], result["info"]


def test_round_trip_fid_from_images_equals_fid_from_stats(batches, inception, monkeypatch):
    samples, ref, adm, stats = batches
    want, info = fid(samples, ref, inception)
    assert "precomputed" not in info and want > 0
    calls = []
    original = type(inception).__call__
    monkeypatch.setattr(type(inception), "__call__",
                        lambda self, x: calls.append(len(x)) or original(self, x))
    for path in (adm, stats):
        got, info = fid(samples, path, inception)
        assert got == pytest.approx(want, rel=1e-9)
        assert info["precomputed"] == ["inception"]
    assert calls == [30, 30]                                 # the samples only, never the batch
    assert info["num_reference"] is None                     # stats.npz holds no images


def test_adm_batch_images_serve_the_other_metrics(batches, inception):
    samples, _, adm, stats = batches
    reference = load_reference(str(adm))
    assert len(reference) == 40 and reference.labels[:4].tolist() == [0, 1, 2, 3]
    run = evaluate(load_reference(str(samples)), reference, "fid,kid,prdc", space="inception",
                   inception=inception, kid_subset_size=20, kid_subsets=3, log=lambda m: None)
    assert {"fid", "kid", "precision"} <= set(run["metrics"])
    with pytest.raises(ValueError, match=r"holds only precomputed statistics .* kid / prdc in "
                                         r"the inception space need its images \(arr_0\)"):
        evaluate(load_reference(str(samples)), load_reference(str(stats)), "kid",
                 space="inception", inception=inception, log=lambda m: None)
    with pytest.raises(ValueError, match="num: stats.npz holds precomputed statistics only"):
        load_reference(str(stats)).head(10)
    assert load_reference(str(adm)).head(10).stats is None   # stats describe all 40 images


def test_bad_batches(tmp_path):
    np.savez(tmp_path / "bad.npz", mu=np.zeros(4), sigma=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"mu \[D\] and sigma \[D, D\], got \(4,\) and \(3, 3\)"):
        load_reference(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "none.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="no arr_0 .* and no mu / sigma"):
        load_reference(str(tmp_path / "none.npz"))


def test_command_line_with_a_stats_only_batch(batches, capsys):
    samples, _, _, stats = batches
    assert main([str(samples), "--ref", str(stats), "--metrics", "fid"]) == 0
    out = capsys.readouterr()
    assert "reference: stats.npz (precomputed mu, sigma)" in out.out
    assert "\nfid " in out.out and "precomputed mu, sigma of stats.npz" in out.err
