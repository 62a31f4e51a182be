"""The README's Python example runs as written, on a store made by the library."""

import re
import shutil
from pathlib import Path

from tiny_store import make_store

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"## Python.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    make_store(tmp_path / "made", n_scans=3, parts=2)
    shutil.copytree(tmp_path / "made", tmp_path / "latentstore-store")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("12 12 ok") and "L1" in printed
