"""FLOPs with text tokens: blocks run on image + caption tokens, text projection and refiner
counted, class-conditional counts unchanged."""
import pytest
from t2i_helpers import captions, images, random_model, text_config

from sgkernels import presets
from sgkernels.flops import forward_gflops, sampling_gflops
from sgkernels.flops.forward import block_token_counts, forward_macs
from sgkernels.guidance import CFG, SparseGuidance


def test_class_conditional_counts_unchanged():
    cfg = presets.get("SiT-XL/2")
    assert sum(forward_macs(cfg).values()) == 114_393_563_136
    assert forward_macs(cfg)["text"] == 0
    with pytest.raises(ValueError, match="text_len"):
        forward_gflops(cfg, text_len=10)


def test_text_macs_by_hand():
    cfg = text_config()                    # D 32, E 24, 2 refiner layers, SwiGLU hidden 128
    d, e, hidden, n_text, n_img = 32, 24, 128, 6, 16
    layer = 4 * n_text * d * d + 3 * n_text * d * hidden
    assert forward_macs(cfg)["text"] == n_text * e * d + 2 * layer + d * d

    def block(n):
        return 6 * d * d + 4 * n * d * d + 3 * n * d * hidden

    assert forward_macs(cfg)["blocks"] == 3 * block(n_img + n_text)
    assert forward_macs(cfg, 0.5)["blocks"] == 2 * block(n_img + n_text) + block(8 + n_text)
    full = forward_macs(cfg, convention="full")
    assert full["text"] - forward_macs(cfg)["text"] == 2 * (2 * n_text ** 2 * d)
    assert full["blocks"] - forward_macs(cfg)["blocks"] == 3 * 2 * (n_img + n_text) ** 2 * d


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.75])
def test_token_counts_match_the_model(gamma):
    cfg = text_config(text_len=5)
    model = random_model(cfg).train()
    x, t = images(cfg, 3)
    with model.record_token_counts() as counts:
        model(x, t, None, text=captions((5, 5, 5)), gamma=gamma)
    per_image = [c // 3 for c in counts[-1]]
    assert per_image == block_token_counts(cfg, gamma)
    assert block_token_counts(cfg, gamma, text_len=9) == [c + 4 for c in per_image]


def test_sampling_flops_count_text_tokens():
    cfg = presets.get("TR-DiT-2.5B")
    dense = forward_gflops(cfg)
    assert dense > forward_gflops(cfg.replace(text_conditioned=False, text_len=0, text_dim=0))
    assert sampling_gflops(cfg, CFG(4.0), 10) == pytest.approx(2 * dense)
    sg = SparseGuidance(1.8, 0.1, 0.8)     # the HPSv3 setting
    expected = forward_gflops(cfg, 0.1) + forward_gflops(cfg, 0.8)
    assert sampling_gflops(cfg, sg, 10) == pytest.approx(expected)
    assert expected < 2 * dense
