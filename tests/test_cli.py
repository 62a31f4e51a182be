import json

import pytest
from typer.testing import CliRunner

from latentstore import __version__
from latentstore.cli import app
from latentstore.store import resolve_store

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    for name in names:
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)
        assert "Usage" in sub.output


def test_store_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LATENTSTORE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_store() == str(tmp_path / "latentstore-store")
    monkeypatch.setenv("LATENTSTORE_STORE", str(tmp_path / "env"))
    assert resolve_store() == str(tmp_path / "env")
    assert resolve_store(tmp_path / "flag") == str(tmp_path / "flag")
    assert resolve_store("s3://bucket/prefix") == "s3://bucket/prefix"
