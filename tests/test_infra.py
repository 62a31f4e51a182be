"""infra/ is checked, not just stored: manifests parse and point at entry points that exist."""

import re
from pathlib import Path

import typer
import yaml

from latentstore.cli import app

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


def _docs():
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        yield path, list(yaml.safe_load_all(path.read_text()))


def test_manifests_parse_with_kind_and_name():
    seen = set()
    for path, docs in _docs():
        for doc in docs:
            assert doc["apiVersion"] and doc["kind"], path
            assert doc["metadata"]["name"], path
            seen.add(doc["kind"])
    assert {"RayCluster", "RayJob", "CronJob"} <= seen


def test_job_entry_points_exist():
    commands = set(typer.main.get_command(app).commands)
    for path, docs in _docs():
        text = path.read_text()
        for script in re.findall(r"/app/(jobs/\w+\.py)", text):
            assert (ROOT / script).exists(), (path, script)
        for doc in docs:
            if doc["kind"] == "CronJob":
                container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
                assert container["args"][0] in commands, path


def test_dockerfile_installs_the_package_and_its_schemas():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM ", text, re.M)
    for copied in ("latentstore", "schemas", "jobs", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{copied}\b", text, re.M), copied
        assert (ROOT / copied).exists()
    assert 'ENTRYPOINT ["latentstore"]' in text


def test_jobs_are_the_cli_commands_and_manifests_pass_options_they_accept():
    group = typer.main.get_command(app)
    for job in sorted((ROOT / "jobs").glob("[!_]*.py")):
        command = re.search(r'run\("(\w+)"\)', job.read_text()).group(1)
        assert command == job.stem and command in group.commands, job  # a job is its CLI command
    for path, docs in _docs():
        for doc in docs:
            if doc["kind"] != "RayJob":
                continue
            args = doc["spec"]["entrypoint"].split()
            script = Path(args[1]).stem
            ctx = group.commands[script].make_context(script, args[2:])  # raises on an unknown option
            assert ctx.params["store"] == "/data/store", path
            submitted = doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["command"]
            assert submitted[submitted.index("--") + 1 :] == args, path  # the submitter runs the same entry point
