"""Ray, in one place: start-up and address handling, the bounded task pool ingest uses, and the actor pool
encode uses. Everything else in the library is plain Python that a test can call without Ray.

Addresses (DESIGN section 5): `--address` if given, else `$RAY_ADDRESS`, else a local Ray with this
machine's CPUs (and GPUs). An already initialised Ray (a notebook, a test, a `ray job submit` driver) is
used as it is and left running.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from .errors import StoreError

# Tasks exchange only small dicts and latent batches; a small object store keeps a local run small.
LOCAL_OBJECT_STORE = 256 * 1024**2


class _QuietTokenNotice(logging.Filter):
    # Ray >= 2.59 logs "Token authentication is enabled ..." on every start of a local cluster; the
    # authentication stays on, the notice goes.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Token authentication is enabled")


def init(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect to `address` / `$RAY_ADDRESS`, or start a local Ray with `num_cpus` CPUs (default: all).

    Returns True when this call started Ray (the caller then shuts it down, see `session`).
    """
    import ray

    if ray.is_initialized():
        return False
    logging.getLogger("ray").addFilter(_QuietTokenNotice())
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.") and "auth" in name:
            logging.getLogger(name).addFilter(_QuietTokenNotice())
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # address="local": always a fresh local Ray, never a `ray start` head that happens to run here
            # (plain ray.init() would join it, and refuse num_cpus); a cluster is chosen with --address.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
                     logging_level=logging.WARNING, object_store_memory=LOCAL_OBJECT_STORE)
            from . import reaper

            reaper.start()  # a SIGKILLed driver takes its local Ray with it (reaper.py)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise StoreError(f"cannot start or reach Ray ({address or 'local'}): {e}") from None
    return True


@contextmanager
def session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[bool]:
    """`init` for the `with` block, then `ray.shutdown()` if this block started Ray (also on Ctrl-C and errors,
    so no local Ray process outlives the command)."""
    import ray

    started = init(address, num_cpus, num_gpus)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


def resources() -> dict[str, float]:
    """The cluster's total CPU and GPU count, and the most CPUs on one node (Ray must be initialised)."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return {"CPU": float(total.get("CPU", 0)), "GPU": float(total.get("GPU", 0)),
            "node_CPU": max((float(n.get("CPU", 0)) for n in nodes), default=float(total.get("CPU", 0)))}


def task_pool(fn: Callable, items: Iterable[Any], args: Callable[[Any], tuple], limit: int,
              num_cpus: float = 1, max_retries: int = 1) -> Iterator[tuple[Any, Any]]:
    """Run `fn(*args(item))` as Ray tasks, at most `limit` in flight; yield `(item, result)` as each finishes.

    A task whose worker died (out of memory, a segfault in a decoder) yields its `ray.exceptions.RayError`
    as the result instead of raising, so one bad input never stops the rest. Tasks still queued when the
    caller stops iterating (an error, Ctrl-C) are cancelled.
    """
    import ray

    task = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(fn)
    pending: dict[Any, Any] = {}
    queue = iter(items)
    exhausted = False
    try:
        while pending or not exhausted:
            while not exhausted and len(pending) < limit:
                item = next(queue, None)
                if item is None:
                    exhausted = True
                    break
                pending[task.remote(*args(item))] = item
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:
                    result = e
                yield item, result
    finally:
        for ref in pending:
            ray.cancel(ref)


READ_CPUS = 1.0  # logical CPUs per read task; fractions let Ray start a Python worker per task (slow, 150 MB each)
READ_RESERVE = 1.0  # logical CPUs CPU actors leave to the read and listing tasks (which ask for 1 CPU)


def actor_pool(n_gpus: int, n_cpus: float, actors: int | None = None, node_cpus: float | None = None) -> dict[str, Any]:
    """How to place a model's actors for `map_batches`.

    With GPUs: one actor per GPU (`num_gpus=1`; Ray gives each its own `CUDA_VISIBLE_DEVICES`). Without:
    CPU actors that share the CPUs but leave `READ_RESERVE` of them to the read tasks (Ray issue 44687:
    actors holding every CPU stall the reads), each running torch with `threads` threads.
    Returns `compute`, `num_gpus`, `num_cpus` (the `map_batches` arguments) and `size`, `threads`.
    """
    from ray.data import ActorPoolStrategy

    if n_gpus >= 1:
        size = min(actors or int(n_gpus), int(n_gpus))
        # num_cpus left to Ray's default: giving both is "experimental" in Ray Data 2.60
        return {"compute": ActorPoolStrategy(size=size), "num_gpus": 1, "num_cpus": None, "size": size, "threads": 1}
    node_cpus = n_cpus if node_cpus is None else node_cpus
    usable = n_cpus - READ_RESERVE
    # Two CPU actors by default: while one waits on its next block (read, transfer), the other computes;
    # on 2 cores two 1-thread actors reach 0.94 of the bare model, one 2-thread actor 0.74 (bench/encode.py).
    actors = actors or min(2, max(1, int(n_cpus)))
    if usable <= 0 or actors > max(1, int(n_cpus)):
        raise StoreError(f"{actors} CPU actor(s) need at least {actors} CPUs plus {READ_RESERVE} for the reads; "
                         f"the cluster has {n_cpus:g}")
    # An actor must fit on one node (a bigger request is infeasible and Ray would wait for ever).
    per_actor = min(usable / actors, max(node_cpus - READ_RESERVE, node_cpus / 2))
    return {"compute": ActorPoolStrategy(size=actors), "num_gpus": 0, "num_cpus": round(per_actor, 3),
            "size": actors, "threads": max(1, int(min(n_cpus, node_cpus) // actors))}
