import json

from typer.testing import CliRunner

from latentstore.catalog import ErrorRow, record_errors, start_run
from latentstore.cli import app
from latentstore.store import Store

runner = CliRunner()


def _store(tmp_path) -> Store:
    store = Store(tmp_path / "store")
    run_id = start_run(store, "ingest", {"archive": "a"})
    record_errors(store, run_id, [ErrorRow("a/x.nii.gz", "load", "truncated gzip"),
                                  ErrorRow("a/y.nii.gz", "load", "truncated gzip"),
                                  ErrorRow("a/z.json", "scan", "not valid JSON")])
    return store


def test_sql_reads_the_catalog(tmp_path):
    store = _store(tmp_path)
    q = "SELECT reason, count(*) AS n FROM errors GROUP BY reason ORDER BY n DESC"
    result = runner.invoke(app, ["sql", q, "--store", store.root, "--format", "json"])
    assert result.exit_code == 0, result.output
    expected = [{"reason": "truncated gzip", "n": 2}, {"reason": "not valid JSON", "n": 1}]
    assert json.loads(result.stdout) == expected  # one JSON document
    lines = runner.invoke(app, ["sql", q, "--store", store.root, "--format", "jsonl"]).stdout.splitlines()
    assert [json.loads(line) for line in lines] == expected  # JSON Lines
    wide = runner.invoke(app, ["sql", "SELECT [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] AS v", "--store", store.root])
    assert "[10 values]" in wide.output
    csv_out = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM slices", "--store", store.root, "--format", "csv"])
    assert csv_out.stdout.splitlines() == ["n", "0"]


def test_sql_cannot_change_data(tmp_path):
    store = _store(tmp_path)
    result = runner.invoke(app, ["sql", "DELETE FROM errors", "--store", store.root])
    assert result.exit_code == 2
    assert "SELECT queries only" in result.output
    after = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM errors", "--store", store.root, "--format", "csv"])
    assert after.stdout.splitlines() == ["n", "3"]


def test_sql_without_a_store_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["sql", "SELECT 1", "--store", str(tmp_path / "nowhere")])
    assert result.exit_code == 3
    assert "no catalog" in result.output and "Traceback" not in result.output


def test_sql_cannot_write_or_read_files(tmp_path):
    store = _store(tmp_path)
    target = tmp_path / "out.csv"
    wrote = runner.invoke(app, ["sql", f"COPY (SELECT 1) TO '{target}'", "--store", store.root])
    assert wrote.exit_code == 2 and "SELECT queries only" in wrote.output
    assert not target.exists()
    store.salt()  # make sure the file exists, so only the sandbox can stop the read
    assert (tmp_path / "store" / "salt").exists()
    stolen = runner.invoke(app, ["sql", f"SELECT * FROM read_text('{store.root}/salt')", "--store", store.root])
    assert stolen.exit_code == 2 and "query failed" in stolen.output


def test_a_copied_store_answers_from_its_own_parts(tmp_path):
    """The views glob the folder the last writer saw; a copy read before any write scans its own parts."""
    import shutil

    from tiny_store import make_store

    root = make_store(tmp_path / "a", n_scans=3, levels=2)
    store = _store(tmp_path)  # a catalog (views refreshed by its writer)...
    shutil.move(str(tmp_path / "store" / "catalog.duckdb"), root / "catalog.duckdb")
    with __import__("latentstore").catalog.writer(Store(root)):
        pass  # ... whose views now glob a/
    shutil.copytree(root, tmp_path / "b")
    shutil.rmtree(root)
    copy = Store(tmp_path / "b")
    assert copy.sql("SELECT count(*) AS n FROM slices").column("n")[0].as_py() == 6
    del store
