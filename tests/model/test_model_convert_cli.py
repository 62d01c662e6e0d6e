"""`python -m sgkernels convert`: sgkernels checkpoints to the official layout and official files
to sgkernels checkpoints, outputs unchanged; errors as one line (sgkernels/model/convert_cli.py)."""
import torch
from model_helpers import DIT_S2, inputs, randomize_

from sgkernels.cli import main as sgkernels_main
from sgkernels.model import RoutedDiT, from_checkpoint, load_official, to_official

SIT = DIT_S2.replace(time_scale=1.0)


def convert(*argv) -> int:
    return sgkernels_main(["convert", *map(str, argv)])


def test_sgkernels_checkpoint_to_official_and_back(tmp_path, capsys):
    model = randomize_(RoutedDiT(SIT), seed=4).eval()
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "step": 3,
                "args": {"model_config": SIT.to_dict()}}, tmp_path / "run.pt")
    assert convert(tmp_path / "run.pt", tmp_path / "sit.pt", "--to", "sit") == 0
    assert "official SiT state dict (32 tensors)" in capsys.readouterr().out
    official = torch.load(tmp_path / "sit.pt", weights_only=True)
    assert set(official) == set(to_official(model, "sit"))
    x, t, y = inputs(SIT)
    torch.testing.assert_close(load_official(official, "sit")(x, t, y), model(x, t, y),
                               rtol=0, atol=0)
    assert convert(tmp_path / "sit.pt", tmp_path / "back.pt", "--to", "sgkernels",
                   "--from", "sit") == 0
    back = from_checkpoint(tmp_path / "back.pt")
    assert back.config == SIT
    torch.testing.assert_close(back(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_errors_are_one_line(tmp_path, capsys):
    model = randomize_(RoutedDiT(SIT), seed=4)
    torch.save(to_official(model, "sit"), tmp_path / "bare.pt")
    cases = [
        ((tmp_path / "bare.pt", tmp_path / "o.pt", "--to", "sgkernels"), "give the kind"),
        ((tmp_path / "bare.pt", tmp_path / "o.pt", "--to", "dit", "--from", "sit"),
         "time_scale 1, the official DiT code with 1000; export it as kind='sit'"),
        ((tmp_path / "bare.pt", tmp_path / "bare.pt", "--to", "sit"), "OUT must differ from IN"),
        ((tmp_path / "none.pt", tmp_path / "o.pt", "--to", "sit"), "checkpoint file not found"),
    ]
    for argv, message in cases:
        assert convert(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sgkernels convert: error:") and message in err, err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()
