"""Presets construct with the published sizes; configs validate and round-trip."""
import pytest
import torch
from model_helpers import small_config

from sgkernels import presets
from sgkernels.model import ModelConfig, Route, RoutedDiT

# DiT/SiT parameter counts without DiT's frozen pos_embed table (256 x D, not a parameter here).
PUBLISHED = {"SiT-S/2": 33.0e6 - 256 * 384, "SiT-B/2": 130.5e6 - 256 * 768,
             "SiT-L/2": 458.1e6 - 256 * 1024, "SiT-XL/2": 675_129_632 - 256 * 1152}


def _meta_model(name):
    with torch.device("meta"):
        return RoutedDiT(presets.get(name))


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_constructs(name):
    cfg = presets.get(name)
    model = _meta_model(name)
    count = sum(p.numel() for p in model.parameters())
    if name in PUBLISHED:
        assert count == pytest.approx(PUBLISHED[name], rel=2e-3)
    elif name == "TR-DiT-2.5B":
        assert 2.3e9 < count < 2.7e9
    else:
        assert 1e5 < count < 2e7                           # CPU presets stay small
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_sit_xl_matches_dit_exactly():
    model = _meta_model("SiT-XL/2")
    assert sum(p.numel() for p in model.parameters()) == 675_129_632 - 256 * 1152
    cfg = presets.get("SiT-XL/2")
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.routes) == (1152, 28, 16, (Route(2, 24, 0.5),))


def test_tr_dit_preset():
    cfg = presets.get("TR-DiT-2.5B")
    assert (cfg.flavour, cfg.dim, cfg.depth, cfg.heads) == ("llama", 2048, 34, 16)
    assert cfg.routes == (Route(2, 30, 0.5),) and cfg.text_conditioned
    assert cfg.mlp_hidden(2048) == 5504                    # 8/3 * 2048 rounded up to 64


@pytest.mark.parametrize("name", [n for n in presets.names() if presets.get(n).flavour == "llama"])
def test_llama_presets_have_no_bias(name):
    names = [n for n, _ in _meta_model(name).named_parameters()]
    assert names and not [n for n in names if "bias" in n]


def test_sit_has_biases():
    assert any("bias" in n for n, _ in _meta_model("SiT-S/2").named_parameters())


def test_fmnist_cpu_preset_is_the_documented_cpu_run():
    # docs/training.md's 20-minute run: Tiny/2 --set patch_size=4 dim=128 heads=2 depth=4
    # 'routes=[[1,2,0.5]]', 1.33 M parameters
    documented = presets.get("Tiny/2").replace(patch_size=4, dim=128, heads=2, depth=4,
                                                routes=(Route(1, 2, 0.5),))
    assert presets.get("FMNIST-CPU/4") == documented
    count = sum(p.numel() for p in _meta_model("FMNIST-CPU/4").parameters())
    assert round(count / 1e4) == 133


def test_smaller_sit_routes_scaled_to_depth():
    assert presets.get("SiT-S/2").routes == (Route(1, 10, 0.5),)
    assert presets.get("SiT-L/2").routes == (Route(2, 21, 0.5),)


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="SiT-XL/2") as err:
        presets.get("SiT-XXL/2")
    assert "Tiny/2" in str(err.value)


@pytest.mark.parametrize("changes, match", [
    (dict(input_size=9), "divisible by patch_size"),
    (dict(dim=30, heads=4), "divisible by heads"),
    (dict(flavour="gpt"), "flavour"),
    (dict(routes=(Route(1, 4, 0.5),)), "ends past the last block"),
    (dict(routes=(Route(0, 2, 0.5), Route(2, 3, 0.5))), "sorted and disjoint"),
    (dict(mask_ratio=1.0), r"\[0, 1\)"),
    (dict(decoder_depth=2), "cannot be combined with routes"),
    (dict(dim=24, heads=4), "head dim divisible by 4"),
    (dict(flavour="sit", dim=30, heads=3, mlp_ratio=4.0), "sin-cos"),
    (dict(mlp_ratio=0.0), "mlp_ratio"),
])
def test_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**small_config("llama").to_dict(), **changes})


def test_route_errors():
    with pytest.raises(ValueError, match="start <= end"):
        Route(3, 2, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Route(0, 1, -0.1)


def test_from_dict_rejects_unknown_keys():
    d = small_config().to_dict()
    d["depht"] = 3
    with pytest.raises(ValueError, match="depht"):
        ModelConfig.from_dict(d)
