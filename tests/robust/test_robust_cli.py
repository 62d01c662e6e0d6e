"""The three commands on user mistakes: ONE stderr line naming the flag or file, exit status 2,
no traceback; --debug shows the traceback; FloatingPointError -> one line, exit status 1."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from robust_helpers import TINY, corrupt_checkpoints, random_model, save_checkpoint, small_config

from sgkernels import cli

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err


def assert_one_line(status, err, *needles, expected_status=2):
    assert status == expected_status, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    out = corrupt_checkpoints(folder)
    out["good"] = save_checkpoint(folder / "tiny.pt", TINY)
    other = random_model(small_config(in_channels=3)).state_dict()
    out["mismatch"] = save_checkpoint(folder / "mismatch.pt", TINY, state=other)
    out["other_kind"] = save_checkpoint(folder / "rgb.pt", small_config(in_channels=3))
    out["folder"] = os.fspath(folder)
    (folder / "a_file").write_text("x")
    out["a_file"] = os.fspath(folder / "a_file")
    images = np.zeros((4, 8, 8, 1), np.uint8)
    np.savez(folder / "good.npz", images, np.arange(4))
    data = (folder / "good.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(data[: len(data) // 2])
    (folder / "empty.npz").write_bytes(b"")
    (folder / "text.npz").write_text("not an npz\n")
    np.savez(folder / "objects.npz", np.array([None, 1], dtype=object))
    np.savez(folder / "float.npz", images.astype(np.float32))
    return out


SAMPLE = ["sample", "--num", "1", "--steps", "1", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("name, needle", [
    ("truncated", "truncated or corrupt"),
    ("empty", "the file is empty"),
    ("text", "it is a text file"),
    ("random", "not a torch.save archive"),
    ("numpy_global", "never loaded"),
    ("mismatch", "patch_embed.proj.weight [32, 3, 2, 2] vs [64, 1, 2, 2]"),
    ("folder", "is a directory"),
])
def test_sample_bad_checkpoints(capsys, files, tmp_path, name, needle):
    status, err = run(capsys, *SAMPLE, "--ckpt", files[name], "--out", str(tmp_path))
    assert_one_line(status, err, "sgkernels sample: error: --ckpt:", files[name], needle)


def test_sample_missing_checkpoint(capsys, tmp_path):
    missing = str(tmp_path / "missing.pt")
    status, err = run(capsys, *SAMPLE, "--ckpt", missing, "--out", str(tmp_path))
    assert_one_line(status, err, "--ckpt: checkpoint file not found", missing)


def test_sample_weak_checkpoint_of_another_model(capsys, files, tmp_path):
    status, err = run(capsys, *SAMPLE, "--ckpt", files["good"], "--weak-ckpt",
                      files["other_kind"], "--guidance", "autoguidance", "--scale", "2",
                      "--out", str(tmp_path))
    assert_one_line(status, err, "--weak-ckpt", files["other_kind"], "in_channels 3 vs 1")


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--solver", "rk4"], "argument --solver: invalid choice"),
    (["--device", "tpu:0"], "--device: expected cpu, cuda or cuda:N, got 'tpu:0'"),
    (["--labels", "3,99"], "--labels must be in [0, 10)"),
    (["--labels", "a"], "expected comma-separated ints"),
    (["--guidance", "sg", "--scale", "nan"], "scale must be a finite float"),
    (["--guidance", "sg", "--scale", "2", "--gamma-weak", "1.5"], "gamma_weak must be in [0, 1)"),
    (["--guidance", "cfg", "--scale", "2", "--interval", "0.5,2"], "interval must satisfy"),
    (["--grid", "-1"], "--grid must be >= 0"),
    (["--prompts", "/nonexistent/prompts.txt"], "--prompts file not found"),
])
def test_sample_bad_flags(capsys, tmp_path, argv, needle):
    status, err = run(capsys, *SAMPLE, "--model", "Tiny/2", "--out", str(tmp_path), *argv)
    assert_one_line(status, err, "sgkernels sample: error:", needle)


def test_sample_bad_preset_and_out_file(capsys, files, tmp_path):
    status, err = run(capsys, *SAMPLE, "--model", "Nope/2", "--out", str(tmp_path))
    assert_one_line(status, err, "--model: unknown preset 'Nope/2'")
    status, err = run(capsys, *SAMPLE, "--model", "Tiny/2", "--out", files["a_file"])
    assert_one_line(status, err, f"--out {files['a_file']} is a file")


def test_sample_int_labels_of_an_unconditional_checkpoint(capsys, tmp_path):
    ckpt = save_checkpoint(tmp_path / "u.pt", small_config(num_classes=0))
    assert cli.main([*SAMPLE, "--ckpt", ckpt, "--num", "2", "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / "samples.npz") as f:
        assert f["arr_1"].tolist() == [-1, -1]                     # no class
    status, err = run(capsys, *SAMPLE, "--ckpt", ckpt, "--labels", "1", "--out", str(tmp_path))
    assert_one_line(status, err, "--labels: the model is unconditional")


def test_sample_non_finite_samples_exit_1(capsys, tmp_path):
    state = random_model(TINY).state_dict()
    state["final.linear.weight"].fill_(3e38)                  # finite weights, inf velocity
    ckpt = save_checkpoint(tmp_path / "huge.pt", TINY, state=state)
    status, err = run(capsys, *SAMPLE, "--ckpt", ckpt, "--out", str(tmp_path))
    assert_one_line(status, err, "image 0 became NaN or inf at step 0 of 1", expected_status=1)


@pytest.mark.parametrize("name, needle", [
    ("truncated.npz", "not a zip archive or truncated"),
    ("empty.npz", "the file is empty"),
    ("text.npz", "never loaded"),
    ("objects.npz", "never loaded"),
    ("float.npz", "expected a uint8 numpy array"),
    ("missing.npz", "samples: expected one of"),
])
def test_eval_bad_files(capsys, files, name, needle):
    path = os.path.join(files["folder"], name)
    status, err = run(capsys, "eval", path, "--metrics", "cfd")
    assert_one_line(status, err, "sgkernels eval: error:", name, needle)
    assert "allow_pickle" not in err


@pytest.mark.parametrize("argv, needle", [
    (["--k", "0"], "--k must be >= 1"),
    (["--alpha", "2"], "--alpha must be in (0, 1)"),
    (["--bootstrap", "1"], "--bootstrap must be 0 (none) or >= 2"),
    (["--kid-subset-size", "1"], "--kid-subset-size must be >= 2"),
    (["--num", "0"], "--num must be >= 1"),
    (["--metrics", "fid,is"], "metrics: expected a non-empty subset"),
    (["--space", "pixels"], "argument --space: invalid choice"),
])
def test_eval_bad_flags(capsys, files, argv, needle):
    status, err = run(capsys, "eval", os.path.join(files["folder"], "good.npz"), *argv)
    assert_one_line(status, err, "sgkernels eval: error:", needle)


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--model", "Nope/2"], "unknown preset 'Nope/2'"),
    (["--data", "imagenet"], "argument --data: invalid choice"),
])
def test_train_bad_flags(capsys, tmp_path, argv, needle):
    status, err = run(capsys, "train", "--out", str(tmp_path), "--device", "cpu", *argv)
    assert_one_line(status, err, "sgkernels train: error:", needle)


def test_train_floating_point_error_is_one_line_exit_1(capsys, monkeypatch):
    import sgkernels.train.cli as train_cli

    def diverge(argv):
        raise FloatingPointError("non-finite loss nan at step 12")

    monkeypatch.setattr(train_cli, "main", diverge)
    status, err = run(capsys, "train", "--model", "Tiny/2")
    assert_one_line(status, err, "sgkernels train: error: non-finite loss nan at step 12",
                    expected_status=1)


def test_os_errors_other_than_paths_exit_1_without_internal_error(capsys, monkeypatch):
    import errno

    import sgkernels.train.cli as train_cli

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoints/latest.pt")

    monkeypatch.setattr(train_cli, "main", full)
    status, err = run(capsys, "train")
    assert_one_line(status, err, "No space left on device", "latest.pt", expected_status=1)
    assert "internal error" not in err


def test_unknown_command_and_internal_errors(capsys, monkeypatch):
    status, err = run(capsys, "smaple")
    assert_one_line(status, err, "unknown command 'smaple'; expected one of train, sample, eval")
    import sgkernels.eval.cli as eval_cli
    monkeypatch.setattr(eval_cli, "main", lambda argv: [][1])
    status, err = run(capsys, "eval", "x.npz")
    assert_one_line(status, err, "internal error: IndexError: list index out of range",
                    "--debug", expected_status=1)


def test_debug_shows_the_traceback(capsys, files, tmp_path, monkeypatch):
    monkeypatch.delenv("SGKERNELS_DEBUG", raising=False)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        cli.main([*SAMPLE, "--debug", "--ckpt", files["truncated"], "--out", str(tmp_path)])
    assert "SGKERNELS_DEBUG" not in os.environ                 # restored after the run
    with pytest.raises(ValueError, match="not a zip archive"):
        cli.main(["eval", os.path.join(files["folder"], "truncated.npz"), "--debug"])


@pytest.mark.parametrize("debug", [False, True])
def test_python_dash_m_exit_status_and_stderr(files, tmp_path, debug):
    argv = [sys.executable, "-m", "sgkernels", *SAMPLE, "--ckpt", files["empty"],
            "--out", str(tmp_path)] + (["--debug"] if debug else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("SGKERNELS_DEBUG", None)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if debug:
        assert proc.returncode == 1 and "Traceback" in proc.stderr
    else:
        assert_one_line(proc.returncode, proc.stderr, files["empty"], "the file is empty")
    assert "the file is empty" in proc.stderr

