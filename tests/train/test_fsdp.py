"""FSDP training (`--parallel fsdp`, gloo on CPU): a 2-process step equals the 1-process step,
with and without activation checkpointing; sharded checkpoints resume at another world size,
survive a write killed midway, export to the single-file layout that `sample` reads, and an
FSDP run continues from a single-file checkpoint."""
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_helpers import ROOT, assert_same_training_state, close_states, subprocess_env, torchrun

from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.train import sharded_checkpoint as sc
from sgkernels.train.cli import main
from sgkernels.train.logger import read_log

ARGS = ["--model", "Tiny/2", "--set", "input_size=8", "patch_size=2", "--data", "digits",
        "--batch", "8", "--lr", "1e-3", "--label-dropout", "0.5", "--grad-clip", "0.5",
        "--ema-decay", "0.9", "--sample-every", "0", "--log-every", "1", "--device", "cpu",
        "--no-progress"]


def _exported(run: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{run.name}-export.pt"
    sc.export(sc.latest(run / "checkpoints"), out)
    return read_checkpoint(out)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


@pytest.mark.parametrize("checkpointing", ["none", "blocks"])
def test_two_process_fsdp_step_equals_one_process_step(tmp_path, checkpointing):
    steps = ["--steps", "2", "--ckpt-every", "0"]
    assert main(ARGS + steps + ["--out", str(tmp_path / "one")]) == 0
    torchrun(2, *ARGS, *steps, "--parallel", "fsdp", "--activation-checkpointing",
              checkpointing, "--out", str(tmp_path / "two"))
    one = read_checkpoint(tmp_path / "one" / "checkpoints" / "latest.pt")
    two = _exported(tmp_path / "two", tmp_path)
    assert two["args"]["world_size"] == 2 and two["args"]["train"]["parallel"] == "fsdp"
    assert one["step"] == two["step"] == 2
    assert_same_training_state(one, two)
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "one")),
                               torch.tensor(_losses(tmp_path / "two")), rtol=1e-5, atol=0)


def test_sharded_checkpoint_resumes_at_world_size_one_and_two(tmp_path):
    fsdp = ["--parallel", "fsdp", "--ckpt-every", "2"]
    torchrun(2, *ARGS, *fsdp, "--steps", "4", "--out", str(tmp_path / "full"))
    torchrun(2, *ARGS, *fsdp, "--steps", "2", "--out", str(tmp_path / "half"))
    assert sc.latest(tmp_path / "half" / "checkpoints").name == "0000002"
    subprocess.run(["cp", "-r", str(tmp_path / "half"), str(tmp_path / "half1")], check=True)
    torchrun(2, *ARGS, *fsdp, "--steps", "4", "--resume", "--out", str(tmp_path / "half"))
    assert main(ARGS + fsdp + ["--steps", "4", "--resume", "--out", str(tmp_path / "half1")]) == 0
    full = _losses(tmp_path / "full")
    for run in ("half", "half1"):
        continued = _losses(tmp_path / run)[2:]
        torch.testing.assert_close(torch.tensor(continued), torch.tensor(full[2:]), rtol=1e-5,
                                   atol=0)
        close_states(_exported(tmp_path / run, tmp_path)["model"],
               _exported(tmp_path / "full", tmp_path)["model"])


KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    import torch
    import torch.distributed.checkpoint as dcp
    from sgkernels import presets
    from sgkernels.model import RoutedDiT
    from sgkernels.train import fsdp, sharded_checkpoint as sc
    fsdp.single_process_group(torch.device("cpu"))
    model = fsdp.shard(RoutedDiT(presets.get("Tiny/2")), bf16=False)
    opt, ema = torch.optim.AdamW(model.parameters()), fsdp.ShardedEMA(model)
    meta = {"model_config": model.config.to_dict()}
    sc.save(sys.argv[1], 1, model, opt, ema, meta)
    save = dcp.save
    def killed(state, checkpoint_id):
        save(state, checkpoint_id=checkpoint_id)          # shards written, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    dcp.save = killed
    sc.save(sys.argv[1], 2, model, opt, ema, meta)
""")


def test_killed_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITE)
    ckpt = tmp_path / "checkpoints"
    proc = subprocess.run([sys.executable, str(script), str(ckpt)], env=subprocess_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (ckpt / "0000002.tmp").is_dir() and not (ckpt / "0000002").exists()
    assert sc.latest(ckpt).name == "0000001"
    exported = sc.export(sc.latest(ckpt), tmp_path / "model.pt")
    assert read_checkpoint(exported)["step"] == 1
    assert sc.remove_partial(ckpt) == [ckpt / "0000002.tmp"]


def test_export_then_sample_and_fsdp_continues_a_single_file_run(tmp_path):
    plain = ["--ckpt-every", "2"]
    assert main(ARGS + plain + ["--steps", "4", "--out", str(tmp_path / "plain")]) == 0
    assert main(ARGS + plain + ["--steps", "2", "--out", str(tmp_path / "mixed")]) == 0
    torchrun(2, *ARGS, *plain, "--parallel", "fsdp", "--steps", "4", "--resume", "--out",
              str(tmp_path / "mixed"))
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "mixed")[2:]),
                               torch.tensor(_losses(tmp_path / "plain")[2:]), rtol=1e-5, atol=0)
    from sgkernels.cli import main as cli
    out = tmp_path / "model.pt"
    assert cli(["export", str(tmp_path / "mixed" / "checkpoints"), "--out", str(out)]) == 0
    close_states(read_checkpoint(out)["model"],
           read_checkpoint(tmp_path / "plain" / "checkpoints" / "latest.pt")["model"])
    assert cli(["sample", "--ckpt", str(out), "--num", "4", "--batch", "4", "--steps", "2",
                "--device", "cpu", "--out", str(tmp_path / "samples")]) == 0
    assert (tmp_path / "samples" / "samples.npz").exists()


MODEL_KINDS = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from sgkernels.model import ModelConfig, RoutedDiT, TextBatch
    from sgkernels.train import fsdp
    from sgkernels.train.draws import draw_samples
    from sgkernels.train.objective import batch_loss, num_route_draws
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    base = dict(input_size=8, patch_size=2, in_channels=1, depth=2, dim=32, heads=2,
                flavour="llama")
    kinds = {"maskdit": ModelConfig(**base, num_classes=10, mask_ratio=0.5, decoder_depth=1,
                                    decoder_dim=32, decoder_heads=2),
             "t2i": ModelConfig(**base, num_classes=0, routes=((1, 1, 0.5),),
                                text_conditioned=True, text_dim=24, text_len=6,
                                text_layers=1)}
    for name, config in kinds.items():
        g = torch.Generator().manual_seed(3)
        x = torch.randn(4, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (4,), generator=g) if config.num_classes else None
        lengths = [3, 6, 2, 5]
        text = torch.randn(sum(lengths), 24, generator=g)
        draws = draw_samples(0, range(4), (1, 8, 8), num_route_draws(config),
                             config.num_tokens, label_dropout=0.5)
        mine = slice(rank * 2, rank * 2 + 2)
        def step(model, part):
            torch.manual_seed(0)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            d = type(draws)(draws.z[part], draws.t[part], draws.drop[part],
                            draws.scores[:, part])
            rows = [sum(lengths[:i]) for i in range(5)]
            tb = None if not config.text_conditioned else TextBatch(
                text[rows[part.start]:rows[part.stop]], lengths[part])
            batch_loss(model, config, x[part], None if y is None else y[part], d,
                       text=tb).backward()
            opt.step()
            return model
        torch.manual_seed(1)
        plain = step(RoutedDiT(config).train(), slice(0, 4)).state_dict()
        torch.manual_seed(1)
        sharded = fsdp.shard(RoutedDiT(config).train(), bf16=False)
        full = fsdp.full_state_dict(step(sharded, mine))
        for k, v in plain.items():
            torch.testing.assert_close(full[k], v, rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
    dist.destroy_process_group()
""")


def test_fsdp_step_of_maskdit_and_text_conditioned_models_equals_the_plain_step(tmp_path):
    script = tmp_path / "kinds.py"
    script.write_text(MODEL_KINDS)
    torchrun(2, script=script)


def test_fsdp_skip_mode_leaves_weights_and_ema_unchanged_at_a_nonfinite_step(tmp_path,
                                                                             monkeypatch):
    from train_helpers import nan_batch_at, tiny_args, tiny_model

    from sgkernels.train import Trainer, fsdp
    monkeypatch.setattr(Trainer, "batch", nan_batch_at(1))
    trainer = Trainer(tiny_args(tmp_path, steps=4, parallel="fsdp", on_nonfinite="skip",
                                grad_clip=1.0), tiny_model())
    try:
        def states():        # copies: on one rank the full tensors share the shards' storage
            return [{k: v.clone() for k, v in state.items()}
                    for state in (fsdp.full_state_dict(trainer.model),
                                  trainer.ema.full_state_dict())]

        trainer.train_step()
        before = states()
        trainer.train_step()                                        # NaN: skipped
        for old, new in zip(before, states()):
            assert all(torch.equal(old[k], new[k]) for k in old)
        trainer.train_step()
        assert not all(torch.equal(before[0][k], v) for k, v in states()[0].items())
        summary = trainer.run()                                     # continues to step 4
        assert summary["step"] == 4 and summary["skipped"] == 1
    finally:
        trainer.close()
