"""Official DiT / SiT weights <-> RoutedDiT: architecture inference, exact export round trip,
time scale of each kind, kind detection and errors naming the key (sgkernels/model/official.py)."""
import argparse

import pytest
import torch
from model_helpers import DIT_S2, inputs, randomize_

from sgkernels.model import RoutedDiT, load_official, to_official
from sgkernels.model.official import (infer_config, load_model, official_positions,
                                      official_state_dict)


def official_weights(kind: str = "sit", seed: int = 0) -> dict:
    scale = 1.0 if kind == "sit" else 1000.0
    return to_official(randomize_(RoutedDiT(DIT_S2.replace(time_scale=scale)), seed), kind)


@pytest.mark.parametrize("kind, scale", [("dit", 1000.0), ("sit", 1.0)])
def test_infers_a_dit_s2_shaped_state_dict_without_config(kind, scale):
    model = load_official(official_weights(kind), kind)
    assert model.config == DIT_S2.replace(time_scale=scale)
    assert not model.training and model.config.routes == ()


@pytest.mark.parametrize("kind", ["dit", "sit"])
def test_export_round_trip_is_exact(kind):
    state = official_weights(kind)
    again = to_official(load_official(state, kind), kind)
    assert list(again) == list(state)
    for key, value in state.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)


def test_time_scale_of_each_kind_gives_the_same_network_outputs():
    """sit at t and dit at the same weights differ only in the embedded time: s = t vs 1000 t."""
    state = official_weights("sit")
    sit, dit = load_official(state, "sit"), load_official(state, "dit")
    x, t, y = inputs(DIT_S2)
    torch.testing.assert_close(dit(x, t / 1000, y), sit(x, t, y), rtol=0, atol=1e-5)
    assert (dit(x, t, y) - sit(x, t, y)).abs().max() > 1e-3


def test_positions_are_the_official_table():
    """pos_embed[0, row·g + col] = [sin(col w), cos(col w), sin(row w), cos(row w)],
    w_k = 10000^(-k / (D/4)): the column half first (official get_2d_sincos_pos_embed)."""
    pos = official_positions(DIT_S2)[0]
    g, d = DIT_S2.grid_size, DIT_S2.dim
    w = 10000.0 ** (-torch.arange(d // 4, dtype=torch.float64) / (d // 4))
    row, col = 1, 3
    want = torch.cat([torch.sin(col * w), torch.cos(col * w), torch.sin(row * w),
                      torch.cos(row * w)]).float()
    torch.testing.assert_close(pos[row * g + col], want)


def test_routes_added_on_load_leave_dense_outputs_unchanged():
    state = official_weights("sit")
    dense, routed = load_official(state, "sit"), load_official(state, "sit", routes=[(0, 1)])
    assert routed.config.routes[0].start == 0 and routed.config.routes[0].gamma == 0.0
    x, t, y = inputs(DIT_S2)
    torch.testing.assert_close(routed(x, t, y), dense(x, t, y), rtol=0, atol=0)
    assert routed(x, t, y, gamma=0.5).shape == x.shape


def test_given_config_is_checked_and_gets_the_kind_time_scale():
    state = official_weights("sit")
    model = load_official(state, "sit", DIT_S2.replace(time_scale=1000.0))
    assert model.config.time_scale == 1.0
    with pytest.raises(ValueError, match=r"shape \(checkpoint vs config\) blocks\.0\."):
        load_official(state, "sit", DIT_S2.replace(mlp_ratio=2.0))
    with pytest.raises(ValueError, match="config.flavour 'sit', got 'llama'"):
        load_official(state, "sit", DIT_S2.replace(flavour="llama"))
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        load_official(state, "sit", {"depth": 2})


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected extra"),
    (lambda s: s.pop("blocks.1.mlp.fc2.bias"), "missing blocks.1.mlp.fc2.bias"),
    (lambda s: s.pop("x_embedder.proj.weight"),
     r"'x_embedder.proj.weight' \(patch embedding \[D, C, p, p\]\) is missing"),
    (lambda s: s.pop("pos_embed"), r"'pos_embed' \(positions \[1, N, D\]\) is missing"),
    (lambda s: s["pos_embed"].mul_(2), "not the fixed 2-D sin-cos table of a 4x4 grid"),
    (lambda s: s["final_layer.linear.weight"].fill_(float("nan")),
     "NaN or inf in final_layer.linear.weight"),
    (lambda s: s.update({"final_layer.linear.weight": torch.zeros(5, 384)}),
     r"final_layer.linear.weight has 5 rows; expected p·p·C = 16 or 2·p·p·C"),
])
def test_bad_weights_name_the_key_and_what_was_expected(change, match):
    state = official_weights("sit")
    change(state)
    with pytest.raises(ValueError, match=match):
        load_official(state, "sit")


def test_unknown_width_needs_a_config():
    config = DIT_S2.replace(dim=64, heads=2)
    state = official_state_dict(randomize_(RoutedDiT(config)))
    with pytest.raises(ValueError, match=r"width 64 is none of the official .* heads=H"):
        load_official(state, "sit")
    assert infer_config(state, "sit", heads=2) == config.replace(time_scale=1.0)


def test_export_errors():
    model = RoutedDiT(DIT_S2)                                   # presets' time_scale 1000
    with pytest.raises(ValueError, match="time_scale 1000, the official SiT code with 1; "
                                         "export it as kind='dit'"):
        to_official(model, "sit")
    with pytest.raises(ValueError, match="kind must be one of"):
        to_official(model, "adm")
    with pytest.raises(ValueError, match="config.flavour 'sit', got 'llama'"):
        to_official(RoutedDiT(DIT_S2.replace(flavour="llama", dim=256, heads=4)), "dit")
    with pytest.raises(ValueError, match="config.norm_eps 1e-06"):
        to_official(RoutedDiT(DIT_S2.replace(norm_eps=1e-5)), "dit")


@pytest.mark.parametrize("container, weights", [
    ({"ema": "E", "model": "M"}, "ema"), ({"ema": "E", "model": "M"}, "model"), ("E", "ema")])
def test_checkpoint_containers(tmp_path, container, weights):
    ema, raw = official_weights("sit", seed=1), official_weights("sit", seed=2)
    obj = {"E": ema, "M": raw}[container] if isinstance(container, str) else \
        {k: {"E": ema, "M": raw}[v] for k, v in container.items()}
    torch.save(obj, tmp_path / "ckpt.pt")
    model = load_official(tmp_path / "ckpt.pt", "sit", weights=weights)
    want = raw if weights == "model" and not isinstance(container, str) else ema
    torch.testing.assert_close(to_official(model, "sit")["blocks.0.attn.qkv.weight"],
                               want["blocks.0.attn.qkv.weight"], rtol=0, atol=0)


def test_load_model_tells_the_kinds_apart(tmp_path):
    state = official_weights("sit")
    sit_args = argparse.Namespace(model="SiT-S/2", path_type="Linear", prediction="velocity")
    dit_args = argparse.Namespace(model="DiT-S/2", image_size=256)
    for args, kind in ((sit_args, "sit"), (dit_args, "dit")):
        torch.save({"model": state, "ema": state, "opt": {}, "args": args}, tmp_path / "t.pt")
        model, found = load_model(tmp_path / "t.pt")
        assert found == kind and model.config.time_scale == (1.0 if kind == "sit" else 1000.0)
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="DiT and SiT share one layout: give the kind"):
        load_model(tmp_path / "bare.pt")
    assert load_model(tmp_path / "bare.pt", "sit")[1] == "sit"
    with pytest.raises(ValueError, match="routes are for official checkpoints"):
        torch.save({"model": {}, "ema": {}, "opt": {}, "step": 0,
                    "args": {"model_config": DIT_S2.to_dict()}}, tmp_path / "pkg.pt")
        load_model(tmp_path / "pkg.pt", routes=[(0, 1)])
