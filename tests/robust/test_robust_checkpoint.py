"""from_checkpoint on corrupt and mismatched files: one ValueError naming the file and what was
expected, never torch's weights_only=False advice."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robust_helpers import corrupt_checkpoints, random_model, save_checkpoint, small_config

from sgkernels.model import from_checkpoint

EXPECTED = "not a sgkernels training checkpoint"


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    return corrupt_checkpoints(tmp_path_factory.mktemp("corrupt"))


@pytest.mark.parametrize("name, reason", [
    ("truncated", "truncated or corrupt"),
    ("empty", "the file is empty"),
    ("text", "it is a text file"),
    ("random", "not a torch.save archive"),
    ("numpy_global", r"pickles Python objects .*numpy.*never loaded"),
])
def test_unreadable_files_name_the_file_and_the_reason(corrupt, name, reason):
    with pytest.raises(ValueError, match=reason) as info:
        from_checkpoint(corrupt[name])
    message = str(info.value)
    assert corrupt[name] in message and EXPECTED in message
    assert "weights_only" not in message and "\n" not in message


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_any_random_bytes_give_one_value_error(tmp_path, data):
    path = tmp_path / "bytes.pt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=EXPECTED) as info:
        from_checkpoint(path)
    assert "weights_only" not in str(info.value)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        from_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        from_checkpoint(tmp_path / "nope.pt")


def test_bare_state_dict_is_recognised(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(random_model(small_config()).state_dict(), path)
    with pytest.raises(ValueError, match=r"lacks keys .*looks like a bare state_dict"):
        from_checkpoint(path)


def test_weights_of_another_config_list_the_first_mismatches(tmp_path):
    other = random_model(small_config(in_channels=3, depth=3)).state_dict()
    path = save_checkpoint(tmp_path / "mismatch.pt", small_config(), state=other)
    with pytest.raises(ValueError) as info:
        from_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path!r}: the 'ema' weights do not fit its "
                              f"model_config")
    assert "unexpected blocks.2." in message
    assert "patch_embed.proj.weight [32, 3, 2, 2] vs [32, 1, 2, 2]" in message
    assert "\n" not in message and len(message) < 600


def test_invalid_model_config_names_the_file(tmp_path):
    path = tmp_path / "cfg.pt"
    state = random_model(small_config()).state_dict()
    bad = dict(small_config().to_dict(), heads=3)
    torch.save({"model": state, "ema": state, "opt": {}, "step": 0,
                "args": {"model_config": bad}}, path)
    with pytest.raises(ValueError, match=r"cfg\.pt.*model_config'\] is not a valid ModelConfig"):
        from_checkpoint(path)


def test_non_finite_weights_are_rejected(tmp_path):
    state = random_model(small_config()).state_dict()
    state["final.linear.weight"][0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", small_config(), state=state)
    with pytest.raises(ValueError, match=r"nan\.pt.*NaN or inf in final\.linear\.weight"):
        from_checkpoint(path)


def test_a_good_checkpoint_still_loads(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", small_config())
    model = from_checkpoint(path, ema=False)
    assert not model.training and os.path.exists(path)
