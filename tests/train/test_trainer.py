"""End-to-end training on sklearn digits with a tiny routed DiT: learning, exact resume,
outputs, finetuning, the CLI."""
import json

import pytest
import torch
from train_helpers import state_equal, tiny_args, tiny_config, tiny_maskdit_config, tiny_model

from sgkernels.model import from_checkpoint
from sgkernels.train import Trainer, train
from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.train.cli import main
from sgkernels.train.logger import read_log


def test_loss_decreases_on_digits(tmp_path):
    args = tiny_args(tmp_path, steps=150, batch=32, lr=2e-3, warmup=10, log_every=10)
    summary = train(args, tiny_model())
    rows = read_log(tmp_path / "log.jsonl")
    assert len(rows) == 15 and summary["step"] == 150
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.75 * first, (first, last)


def test_maskdit_training_learns(tmp_path):
    args = tiny_args(tmp_path, steps=60, batch=32, lr=2e-3, warmup=10, log_every=10,
                     maskdit_lambda=0.5)
    train(args, tiny_model(tiny_maskdit_config()))
    rows = read_log(tmp_path / "log.jsonl")
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    kw = {"steps": 6, "ckpt_every": 2, "label_dropout": 0.3, "t_sampling": "logit-normal",
          "grad_clip": 0.5}
    reference = Trainer(tiny_args(tmp_path / "ref", **kw), tiny_model())
    reference.run()

    crashing = Trainer(tiny_args(tmp_path / "run", **kw), tiny_model())
    step_fn = Trainer.train_step

    def crash_at_5(self):
        if self.step == 4:
            raise KeyboardInterrupt("simulated kill")
        return step_fn(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    monkeypatch.setattr(Trainer, "train_step", step_fn)
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 4

    resumed = Trainer(tiny_args(tmp_path / "run", resume=True, **kw), tiny_model(seed=99))
    assert resumed.step == 4
    resumed.run()
    assert resumed.step == 6
    assert state_equal(resumed.model.state_dict(), reference.model.state_dict())
    assert state_equal(resumed.ema.state_dict(), reference.ema.state_dict())
    a, b = resumed.opt.state_dict()["state"], reference.opt.state_dict()["state"]
    assert all(state_equal(a[k], b[k]) for k in b)


def test_resume_rejects_changed_arguments(tmp_path):
    train(tiny_args(tmp_path, steps=2), tiny_model())
    with pytest.raises(ValueError, match=r"arguments differ.*'lr'"):
        Trainer(tiny_args(tmp_path, steps=4, lr=5e-4, resume=True), tiny_model())
    with pytest.raises(FileNotFoundError):
        Trainer(tiny_args(tmp_path / "empty", resume=True), tiny_model())


def test_run_outputs(tmp_path):
    args = tiny_args(tmp_path, steps=4, ckpt_every=2, sample_every=4, log_every=2, progress=True)
    trainer = Trainer(args, tiny_model())
    trainer.run()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["0000002.pt", "0000004.pt", "latest.pt"]
    assert (tmp_path / "samples" / "0000004.png").stat().st_size > 0
    assert (tmp_path / "loss.png").stat().st_size > 0
    rows = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and all(r["images_per_s"] > 0 for r in rows)
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("step,loss,lr")
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert ckpt["args"]["model_config"] == tiny_config().to_dict() and ckpt["step"] == 4
    ema = from_checkpoint(tmp_path / "checkpoints" / "latest.pt")  # weights_only load
    assert state_equal(ema.state_dict(), trainer.ema.state_dict())


def test_finetune_dense_from_ema(tmp_path):
    train(tiny_args(tmp_path / "base", steps=2), tiny_model())
    ckpt = tmp_path / "base" / "checkpoints" / "latest.pt"
    args = tiny_args(tmp_path / "ft", steps=1, lr=None, finetune=str(ckpt), routing="off")
    trainer = Trainer(args, None)
    assert args.effective_lr == 1e-5
    assert state_equal(trainer.model.state_dict(), read_checkpoint(ckpt)["ema"])
    with trainer.model.record_token_counts() as counts:
        trainer.run()
    # routing off: every block processed all 8 x 16 tokens of the batch
    assert counts[-1] == [8 * 16] * 2


def test_finetune_and_resume_errors_name_the_checkpoint(tmp_path):
    """--finetune from another model's checkpoint and --resume over a corrupt latest.pt: one
    ValueError naming the file, never a size-mismatch dump or torch's weights_only advice."""
    train(tiny_args(tmp_path / "base", steps=1), tiny_model())
    ckpt = tmp_path / "base" / "checkpoints" / "latest.pt"
    with pytest.raises(ValueError, match=r"checkpoint .*latest.pt.*'ema'.*shape"):
        Trainer(tiny_args(tmp_path / "ft", finetune=str(ckpt)), tiny_model(tiny_config(dim=64)))
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bad" / "checkpoints" / "latest.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"latest.pt' is not a sgkernels training checkpoint"):
        Trainer(tiny_args(tmp_path / "bad", resume=True), tiny_model()).run()


def test_time_limit_stops_with_checkpoint(tmp_path):
    summary = train(tiny_args(tmp_path, steps=50, time_limit=1e-9), tiny_model())
    assert summary["step"] == 1
    assert read_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == 1


def test_cli_trains_a_preset_with_overrides(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--model", "Tiny/2", "--set", "input_size=8", "patch_size=2", "--data", "digits",
               "--steps", "2", "--batch", "4", "--sample-every", "0", "--ckpt-every", "0",
               "--sample-steps", "2", "--sample-count", "10", "--device", "cpu", "--no-progress",
               "--out", str(out)])
    assert rc == 0 and "done: step 2" in capsys.readouterr().out
    saved = json.loads((out / "args.json").read_text())
    assert saved["model_config"]["input_size"] == 8 and saved["model_config"]["depth"] == 3
    assert read_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="t_sampling"):
        tiny_args("x", t_sampling="cosine")
    with pytest.raises(ValueError, match="routing"):
        tiny_args("x", routing="maybe")
    with pytest.raises(ValueError, match="model_set"):
        main(["--model", "Tiny/2", "--set", "not_a_field=3", "--data", "digits", "--steps", "0",
              "--device", "cpu", "--out", "/tmp/unused"])


def test_sample_grid_is_fixed_and_tiles_classes(tmp_path):
    from PIL import Image

    from sgkernels.runtime.images import save_grid
    from sgkernels.train.grid import generate

    model = tiny_model()
    a = generate(model, (1, 8, 8), 10, 20, 3, seed=5, device="cpu")
    b = generate(model, (1, 8, 8), 10, 20, 3, seed=5, device="cpu")
    assert a.shape == (20, 1, 8, 8) and torch.equal(a, b) and model.training
    img = Image.open(save_grid(a, tmp_path / "g.png", ncol=10, pad=2, upscale=2))
    assert img.size == (2 * (10 * 10 + 2), 2 * (2 * 10 + 2)) and img.mode == "L"


@pytest.mark.gpu
def test_cuda_bf16_autocast_training(tmp_path):
    args = tiny_args(tmp_path, steps=20, batch=32, lr=2e-3, device="cuda", log_every=10)
    trainer = Trainer(args, tiny_model())
    summary = trainer.run()
    assert summary["step"] == 20 and torch.isfinite(torch.tensor(summary["loss"]))
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.model.parameters())
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert "cuda" in ckpt["args"]["rng"]


def test_batch_is_the_same_wherever_it_is_copied(tmp_path):
    # trainer.batch builds x / y / draws on the host and moves them with to_device
    trainer = Trainer(tiny_args(tmp_path, label_dropout=0.3), tiny_model())
    x, y, text, draws = trainer.batch(3)
    again = trainer.batch(3)
    assert text is None and x.shape == (8, 1, 8, 8) and y.dtype == torch.int64
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert all(torch.equal(getattr(draws, k), getattr(again[3], k))
               for k in ("z", "t", "drop", "scores"))


@pytest.mark.gpu
def test_cuda_batch_preparation_does_not_sync(tmp_path):
    trainer = Trainer(tiny_args(tmp_path, device="cuda"), tiny_model())
    trainer.train_step()                              # warm-up (allocators, pinned pool)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, y, _, draws = trainer.batch(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.is_cuda and y.is_cuda and draws.z.is_cuda and draws.scores.is_cuda
