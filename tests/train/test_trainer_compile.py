"""--compile: the trainer compiles each block (after the EMA copy; under FSDP before sharding),
and a compiled run follows the eager one (weights, EMA, losses) to fp32 tolerance."""
import functools

import pytest
import torch
from torch._dynamo.utils import counters
from train_helpers import close_states, tiny_args, tiny_model

from sgkernels.model import RoutedDiT
from sgkernels.train.cli import parser
from sgkernels.train.trainer import Trainer


@pytest.fixture
def aot_eager(monkeypatch):
    """compile_blocks with the aot_eager backend: the traced graphs without code generation."""
    monkeypatch.setattr(RoutedDiT, "compile_blocks", functools.partialmethod(
        RoutedDiT.compile_blocks, backend="aot_eager"))


def _run(tmp_path, name, **changes):
    trainer = Trainer(tiny_args(tmp_path / name, steps=3, label_dropout=0.3, **changes),
                      tiny_model())
    try:
        summary = trainer.run()
        return trainer, summary
    finally:
        trainer.close()


@pytest.mark.parametrize("parallel, checkpointing", [("ddp", "blocks"), ("fsdp", "none")])
def test_compiled_training_follows_eager_training(tmp_path, aot_eager, parallel, checkpointing):
    kw = dict(parallel=parallel, activation_checkpointing=checkpointing)
    eager, eager_summary = _run(tmp_path, "eager", **kw)
    torch._dynamo.reset()
    counters.clear()
    compiled, summary = _run(tmp_path, "compiled", compile=True, **kw)
    assert all(b._compiled_call_impl is not None for b in compiled.model.blocks)
    if parallel == "ddp":                 # the EMA copy was made before compiling: eager
        assert all(b._compiled_call_impl is None for b in compiled.ema.model.blocks)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert summary["loss"] == pytest.approx(eager_summary["loss"], rel=1e-4)
    state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
             for k, v in compiled.model.state_dict().items()}
    reference = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                 for k, v in eager.model.state_dict().items()}
    close_states(state, reference)


def test_compile_flag_reaches_the_arguments():
    assert parser().parse_args(["--compile"]).compile is True
    assert parser().parse_args([]).compile is False
