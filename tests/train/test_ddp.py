"""Data parallel: a 2-process torchrun (gloo, CPU) step equals the 1-process step on the
combined batch, because both draw the same per-sample noise, times, dropout and routes."""
import pytest
import torch
from train_helpers import assert_same_training_state, torchrun

from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.train.cli import main
from sgkernels.train.logger import read_log

ARGS = ["--model", "Tiny/2", "--set", "input_size=8", "patch_size=2", "--data", "digits",
        "--steps", "2", "--batch", "8", "--lr", "1e-3", "--label-dropout", "0.5",
        "--ckpt-every", "0", "--sample-every", "0", "--log-every", "1", "--device", "cpu",
        "--no-progress"]


MASKDIT_DENSE = ["--set", "routes=[]", "mask_ratio=0.5", "decoder_depth=1", "decoder_dim=32",
                 "decoder_heads=1", "--routing", "off"]


@pytest.mark.parametrize("extra", [
    [], pytest.param(MASKDIT_DENSE, marks=pytest.mark.slow, id="maskdit-dense")])
def test_two_process_step_equals_one_process_step(tmp_path, extra):
    args = ARGS + extra
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    torchrun(2, *args, "--out", str(tmp_path / "two"))

    one = read_checkpoint(tmp_path / "one" / "checkpoints" / "latest.pt")
    two = read_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert two["args"]["world_size"] == 2 and one["args"]["world_size"] == 1
    assert one["step"] == two["step"] == 2
    assert_same_training_state(one, two)
    losses = [[r["loss"] for r in read_log(tmp_path / d / "log.jsonl")] for d in ("one", "two")]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5,
                               atol=0)
