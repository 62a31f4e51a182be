"""Ray job: ingest an archive into a store's `slices/` (the same function as `latentstore ingest`).

Locally (starts a Ray with this machine's CPUs, or joins `$RAY_ADDRESS`):

    python jobs/ingest.py ARCHIVE --store STORE [--address ray://head:10001] [--workers N] [--json]

On a cluster (the driver runs on the head node; archive and store must be paths every node sees):

    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/ingest.py /data/archive --store /data/store

Under `ray job submit`, `ray.init()` finds the cluster through the `RAY_ADDRESS` the job runner sets.
Exit status as in the CLI: 0 clean, 4 some inputs rejected (see the catalog's `errors`), 2 bad
arguments, 3 store problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# `python jobs/ingest.py` from a checkout without `pip install`: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentstore.errors import LatentstoreError, PartialFailure  # noqa: E402
from latentstore.ingest.run import ingest, summary_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/ingest.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="archive folder (NIfTI VerSe layout and/or DICOM)")
    parser.add_argument("--store", default=None, help="store folder or URI (default $LATENTSTORE_STORE)")
    parser.add_argument("--address", default=None, help="Ray address (default $RAY_ADDRESS, else local)")
    parser.add_argument("--workers", type=int, default=None, help="scans processed at once")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = ingest(args.archive, args.store, address=args.address, workers=args.workers, progress=not args.json)
    except LatentstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        from rich.console import Console

        Console().print(summary_table(summary))
    if not summary.clean:
        print(f"error: {summary.errors} input(s) rejected, the rest stored (errors of run {summary.run_id})", file=sys.stderr)
        return PartialFailure.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
