"""The README's Python example runs as written, and its set-up commands are the ones CI uses."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)  # it writes plan.json
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "plan.json").exists()


def test_readme_commands():
    text = (ROOT / "README.md").read_text()
    assert "ompq-ext demo" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest" in ci and "python -m pytest" in text
