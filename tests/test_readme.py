"""The README's API example runs as written (with fewer sampling steps) and its claims hold."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "steps=40" in code
    scope = {}
    exec(compile(code.replace("steps=40", "steps=3"), str(README), "exec"), scope)
    assert scope["v"].shape == scope["x"].shape == scope["images"].shape
    assert torch.isfinite(scope["images"]).all()


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    commands = [line.strip() for line in text.splitlines() if line.startswith("    python3 -m venv")]
    assert len(commands) == 2, "README must hold exactly two set-up commands"
    assert commands[0].endswith("python benchmarks/gamma_grid.py")
    assert commands[1] in ci, ".ci/run must run the README's test command verbatim"
