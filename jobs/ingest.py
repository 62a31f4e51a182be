"""Ray job: ingest an archive into a store's `slices/`: exactly `latentstore ingest` (same options).

Locally (starts a Ray with this machine's CPUs, or joins `$RAY_ADDRESS`):

    python jobs/ingest.py ARCHIVE --store STORE [--address ray://head:10001] [--workers N] [--model ID] [--json]

On a cluster (the driver runs on the head node; archive and store must be paths every node sees):

    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/ingest.py /data/archive --store /data/store

Exit status as in the CLI: 0 clean, 4 some inputs rejected (see the catalog's `errors`), 2 bad
arguments, 3 store problems.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("ingest"))
