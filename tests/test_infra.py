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
                if "command" in container:  # a Ray job submitter: the entry point after "--" is a job
                    _check_job_call(container["command"][container["command"].index("--") + 1 :])
                else:  # the image's entry point is the CLI
                    assert container["args"][0] in commands, path


def _check_job_call(argv: list[str]) -> None:
    """`python [/app/]jobs/X.py OPTIONS...`: X is a job, and its CLI command accepts the options."""
    group = typer.main.get_command(app)
    assert argv[0] == "python" and re.fullmatch(r"(/app/)?jobs/\w+\.py", argv[1]), argv
    assert (ROOT / "jobs" / Path(argv[1]).name).exists(), argv
    script = Path(argv[1]).stem
    ctx = group.commands[script].make_context(script, argv[2:])  # raises on an unknown option
    assert ctx.params["store"] == "/data/store", argv


def test_cron_entries_submit_jobs_that_exist():
    import shlex

    entries = 0
    for path in sorted((INFRA / "cron").glob("*.cron")):
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith("#") or re.match(r"^\w+=", line):
                continue
            fields = line.split(None, 5)
            assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), line
            argv = shlex.split(fields[5].split(">>")[0])
            assert argv[:3] == ["ray", "job", "submit"], line
            _check_job_call(argv[argv.index("--") + 1 :])
            entries += 1
    assert entries >= 1


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
