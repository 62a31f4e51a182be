"""Ray job: encode a store's slices into `latents/model_id=<id>/`: exactly `latentstore encode`.

    python jobs/encode.py --store STORE [--model ID] [--batch-size N] [--actors N] [--json]
    ray job submit --address http://head:8265 --working-dir . -- python jobs/encode.py --store /data/store

One encoder actor per GPU of the cluster (CPU actors when it has none). Exit status as in the CLI.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("encode"))
