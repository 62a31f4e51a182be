
import typer
from typer.testing import CliRunner

from latentstore import __version__
from latentstore.cli import app
from latentstore.store import resolve_store

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def _command_paths(cmd, prefix=()):
    for name, sub in getattr(cmd, "commands", {}).items():
        yield (*prefix, name)
        yield from _command_paths(sub, (*prefix, name))


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("slices", "show") in paths
    for path in paths:
        sub = runner.invoke(app, [*path, "--help"])
        assert sub.exit_code == 0, (path, sub.output)
        assert "Usage" in sub.output


def test_store_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LATENTSTORE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_store() == str(tmp_path / "latentstore-store")
    monkeypatch.setenv("LATENTSTORE_STORE", str(tmp_path / "env"))
    assert resolve_store() == str(tmp_path / "env")
    assert resolve_store(tmp_path / "flag") == str(tmp_path / "flag")
    assert resolve_store("s3://bucket/prefix") == "s3://bucket/prefix"


def test_bad_slicing_option_is_one_line_exit_2(tmp_path):
    (tmp_path / "archive").mkdir()
    result = runner.invoke(app, ["ingest", str(tmp_path / "archive"), "--thickness", "2", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "odd whole number" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()  # nothing written for a rejected argument
