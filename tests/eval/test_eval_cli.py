import json

import numpy as np
import pytest
from eval_helpers import blobs, random_classifier, save_stand_in_inception

from sgkernels.eval import classifier as clf
from sgkernels.eval.cli import main


@pytest.fixture
def files(tmp_path, monkeypatch):
    stub = random_classifier()
    monkeypatch.setattr(clf, "load_classifier",
                        lambda seed=0, log=print: (stub.model, {"arch": "stub"}))
    monkeypatch.setenv("SGKERNELS_INCEPTION",
                       save_stand_in_inception(tmp_path / "stand.pt", dim=32))
    samples, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    np.savez(samples, np.pad(blobs(60, seed=1), ((0, 0), (2, 2), (2, 2), (0, 0))),
             np.arange(60) % 10)
    np.savez(ref, blobs(80, seed=0))
    return samples, ref


def test_table_and_json(files, tmp_path, capsys):
    samples, ref = files
    out = tmp_path / "res" / "r.json"
    rc = main([str(samples), "--ref", str(ref), "--num", "50", "--kid-subset-size", "30",
               "--kid-subsets", "4", "--bootstrap", "5", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("fid", "cfd", "kid", "precision", "recall", "density", "coverage", "acc"):
        assert f"\n{name} " in text, name
    assert "95% interval" in text
    result = json.loads(out.read_text())
    assert result["info"]["num_samples"] == 50 and result["info"]["num_reference"] == 80
    assert set(result["metrics"]["fid"]) == {"value", "low", "high", "std", "mean"}
    assert result["info"]["bootstrap"]["replicates"] == 5


def test_labels_missing_skip_acc_only_by_default(files, capsys):
    samples, ref = files
    assert main([str(ref), "--ref", str(ref), "--metrics", "cfd,kid,prdc,acc"]) == 2
    assert "no labels" in capsys.readouterr().err
    assert main([str(ref), "--ref", str(samples), "--kid-subset-size", "30",
                 "--kid-subsets", "2"]) == 0
    captured = capsys.readouterr()
    assert "skipping acc" in captured.err and "\nacc " not in captured.out
    assert "\ncfd " in captured.out


def test_errors_are_one_line(files, tmp_path, capsys):
    samples, _ = files
    assert main([str(tmp_path / "missing.npz")]) == 2
    assert "samples: expected one of" in capsys.readouterr().err
    assert main([str(samples), "--metrics", "fid,inception-score"]) == 2
    assert "metrics" in capsys.readouterr().err
    assert main([str(samples), "--ref", str(samples), "--num", "1000"]) == 2
    assert "num" in capsys.readouterr().err


def test_dispatch_from_the_package_cli(files, capsys):
    from sgkernels.cli import main as top
    samples, ref = files
    assert top(["eval", str(samples), "--ref", str(ref), "--metrics", "acc"]) == 0
    assert "\nacc " in capsys.readouterr().out
