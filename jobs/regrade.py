"""Ray job: refit when the labels changed, then grade every latent without a current grade: exactly
`latentstore regrade`. What the schedules in `infra/` submit (`infra/cron/regrade.cron`,
`infra/k8s/cronjob-regrade.yaml`).

    python jobs/regrade.py --store STORE [--model ID] [--json]
    ray job submit --address http://head:8265 --working-dir . -- python jobs/regrade.py --store /data/store

Incremental and idempotent: a run with nothing new grades nothing. Exit status as in the CLI.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("regrade"))
