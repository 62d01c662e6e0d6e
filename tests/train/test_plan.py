"""The memory planner (sgkernels/train/plan.py) against the bytes training actually holds.

Activations: the unique storages autograd saves during a training forward (saved-tensor hooks),
for every model kind (Llama / SiT flavour, TREAD routes, MaskDiT, text conditioning) in fp32 and
under bf16 autocast. Model state: the parameters, gradients, AdamW states and EMA of a real
Trainer after one step. On a GPU: torch.cuda.max_memory_allocated of a training step."""
import json
import math

import pytest
import torch
from train_helpers import tiny_args, tiny_config, tiny_model

from sgkernels import presets
from sgkernels.model import RoutedDiT
from sgkernels.model.text import TextBatch
from sgkernels.train import Trainer
from sgkernels.train import plan as P
from sgkernels.train.plan_cli import main as plan_main

TOLERANCE = 0.05            # the acceptance bound is 10%; the derivation is far closer


def _inputs(config, batch, device="cpu"):
    c = config
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, device=device)
    t = torch.rand(batch, device=device)
    y = torch.randint(0, c.num_classes, (batch,), device=device) if c.num_classes else None
    text = (TextBatch(torch.randn(batch * c.text_len, c.text_dim, device=device),
                      [c.text_len] * batch) if c.text_conditioned else None)
    return x, t, y, text


def saved_bytes(model, config, batch, bf16, monkeypatch=None):
    """Bytes of the distinct storages autograd keeps for backward, parameters excluded; with
    block checkpointing, what autograd saves outside the blocks plus the tensors each
    checkpointed block call holds (its arguments) instead of its activations."""
    x, t, y, text = _inputs(config, batch)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    if monkeypatch is not None:
        from torch.utils.checkpoint import checkpoint

        def held(fn, b, mod, h, **kwargs):
            fields = (b.x, b.seg, b.pos, b.cu_seqlens, b.cond, h, *(mod or ()))
            for tensor in fields:
                if tensor is not None:
                    pack(tensor)
            return checkpoint(fn, b, mod, h, **kwargs)
        monkeypatch.setattr("sgkernels.model.blocks._checkpoint", held)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            v = model(x, t, y, text=text)
            ((v.float() - x) ** 2).mean()
    return sum(n for key, n in seen.items() if key not in params)


@pytest.mark.parametrize("name", ["Tiny/2", "FMNIST-CPU/2", "FMNIST-SiT-S/2",
                                  "FMNIST-MaskDiT-S/2", "Tiny-T2I/2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_rows_match_saved_tensors(name, precision):
    config = presets.get(name)
    torch.manual_seed(0)
    model = RoutedDiT(config).train()
    measured = saved_bytes(model, config, 3, precision == "bf16")
    rows = {r.name: r.bytes for r in P.plan(config, 1, 3, "ddp", "none", precision,
                                            device="cpu").rows}
    planned = rows["activations"] + rows.get("weight casts", 0)
    assert abs(planned / measured - 1) < TOLERANCE, (planned, measured)


@pytest.mark.parametrize("name", ["Tiny/2", "FMNIST-SiT-S/2", "FMNIST-MaskDiT-S/2",
                                  "Tiny-T2I/2"])
def test_checkpointed_activation_rows_match_what_stays_alive(name, monkeypatch):
    config = presets.get(name)
    torch.manual_seed(0)
    model = RoutedDiT(config).train().set_activation_checkpointing("blocks")
    measured = saved_bytes(model, config, 3, False, monkeypatch)
    recompute = max(s.tokens * P._token_bytes(config.flavour, s.dim, config.mlp_hidden(s.dim),
                                              s.heads, "fp32", "cpu") for s in P.stages(config))
    planned = P.activation_bytes(config, 3, "fp32", "blocks", "cpu") - 3 * recompute
    # the small terms outside the blocks (MaskDiT decoder fill, T2I text and row gathers) are
    # approximated; they weigh most here, where the blocks keep only their inputs
    assert abs(planned / measured - 1) < 0.10, (planned, measured)


def test_state_rows_equal_a_trainers_tensors_after_one_step(tmp_path):
    config = tiny_config()
    trainer = Trainer(tiny_args(tmp_path, steps=1), tiny_model(config))
    trainer.train_step()

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    measured = {
        "parameters": nbytes(trainer.model.parameters()),
        "gradients": nbytes(p.grad for p in trainer.model.parameters() if p.grad is not None),
        "AdamW states": nbytes(v for s in trainer.opt.state.values() for k, v in s.items()
                               if k != "step"),
        "EMA": nbytes(trainer.ema.model.parameters()),
    }
    rows = {r.name: r.bytes for r in P.plan(config, 1, 8, "ddp", precision="fp32").rows}
    assert {k: rows[k] for k in measured} == measured
    trainer.close()


def test_fsdp_rows_shard_every_parameter_with_dim0_padding():
    config = presets.get("Tiny/2")
    counts = P.count_params(config, 3)
    with torch.device("meta"):
        params = list(RoutedDiT(config).parameters())
    assert counts.sharded == sum(math.ceil(p.shape[0] / 3) * p[0].numel() for p in params)
    rows = {r.name: r.bytes for r in P.plan(config, 3, 6, "fsdp", precision="fp32").rows}
    assert rows["parameters"] == rows["EMA"] == 4 * counts.sharded
    assert rows["AdamW states"] == 8 * counts.sharded
    assert rows["unsharded params"] == 4 * (counts.root + 2 * counts.block)


def test_checkpointing_keeps_block_inputs_and_one_block():
    config = presets.get("SiT-XL/2")
    none = P.activation_bytes(config, 8, "bf16", "none")
    blocks = P.activation_bytes(config, 8, "bf16", "blocks")
    assert blocks < none / 5                  # 28 blocks: inputs + one block instead of 28


def test_routing_lowers_activations_in_proportion_to_kept_tokens():
    config = presets.get("SiT-XL/2")
    routed = P.activation_bytes(config, 8, "bf16")
    dense = P.activation_bytes(config.replace(routes=()), 8, "bf16")
    # r_{2->24} at 0.5: 23 of 28 blocks on half the tokens
    assert routed / dense == pytest.approx((5 + 23 * 0.5) / 28, rel=0.03)


def test_large_models_need_fsdp_on_80_gib():
    config = presets.get("TR-DiT-2.5B")                    # 2.7 B parameters
    ddp = P.plan(config, 8, 256, "ddp", "none", "bf16", gpu_gib=80)
    fsdp = P.plan(config, 8, 256, "fsdp", "none", "bf16", gpu_gib=80)
    assert not ddp.fits and fsdp.fits
    state = {r.name: r.bytes for r in ddp.rows if r.name != "activations"}
    assert 20 < sum(state.values()) / P.count_params(config).total < 22   # + 2 P_w casts


def test_plan_rejects_bad_arguments_naming_them():
    config = presets.get("Tiny/2")
    with pytest.raises(ValueError, match="batch: expected a multiple of gpus"):
        P.plan(config, 4, 6)
    with pytest.raises(ValueError, match="parallel: expected one of"):
        P.plan(config, 1, 4, "zero3")
    with pytest.raises(ValueError, match="gpus: expected an int >= 1"):
        P.plan(config, 0, 4)


def test_cli_prints_every_combination_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan_main(["--model", "SiT-XL/2", "--gpus", "1", "--batch", "32", "--gpu-mem", "80",
                      "--activation-checkpointing", "both", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("total") == 4 and "fits" in text
    data = json.loads(out.read_text())
    assert len(data["plans"]) == 4 and data["config"]["depth"] == 28
    assert all(p["total"] == sum(r["bytes"] for r in p["rows"]) for p in data["plans"])


@pytest.mark.gpu
def test_planned_peak_bounds_cuda_max_memory_allocated():
    config = presets.get("FMNIST-S/2")
    torch.manual_seed(0)
    model = RoutedDiT(config).cuda().train()
    x, t, y, text = _inputs(config, 64, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", torch.bfloat16):
        loss = ((model(x, t, y, text=text).float() - x) ** 2).mean()
    peak = torch.cuda.max_memory_allocated() - base
    loss.backward()
    rows = {r.name: r.bytes for r in P.plan(config, 1, 64, "ddp", "none", "bf16").rows}
    planned = rows["activations"] + rows["weight casts"]
    assert abs(planned / peak - 1) < 0.10, (planned, peak)
