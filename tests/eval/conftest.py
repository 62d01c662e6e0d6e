import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every eval test gets an empty cache of its own (never the user's)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SGKERNELS_CACHE", str(path))
    return path
