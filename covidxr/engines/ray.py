"""The Ray engine: Ray Data's batch-inference pattern over the films' paths.

A dataset of records (path, label, source; a few strings each, built on the driver: no read task holds a
CPU) -> `map_batches` with `Scorer`, a callable class that loads the model once per actor and calls the
shared per-batch step (covidxr.engines.batch.score_records) -> result blocks streamed back to the driver,
which appends them to the results file as they come. Pixels never enter Ray's object store: each actor
reads its films from the path, so every node must see the films at the same path (a shared file system).

Resources: each actor asks for ACTOR_CPUS (a fraction of a CPU) and the pool size (`workers`) is what
bounds the work: with whole CPUs per actor, Ray Data's accounting deadlocked on 2 CPUs, and an actor
restarted after its node was lost could not find room on the remaining node. Actors are spread over the
nodes and restarted (their batches retried) when a node is lost.

Privacy, for a locally started instance: object spilling is off unless the operator names a directory
(`spill_dir`), the dashboard and usage statistics are off, workers' output is not sent to the driver,
and Ray's session files live in a private temporary folder removed at the end. When joining a cluster
(`address`), those are the cluster operator's settings (docs/cluster.md).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from typing import Iterator, Sequence

from .batch import columns, score_records

ACTOR_CPUS = 0.5
LOCAL = (None, "", "local")


class Scorer:
    """One actor of the pool: the model, loaded once; each call scores one batch of records."""

    def __init__(self, weights: str, threads: int | None, threshold: float | None, include_non_chest: bool,
                 site: str | None = None):
        from ..classifier import load

        self.classifier = load(weights, threads or 1, site)
        self.threshold, self.include_non_chest = threshold, include_non_chest

    def __call__(self, batch):
        import pandas as pd

        results = score_records(self.classifier, batch.to_dict("records"), self.threshold, self.include_non_chest)
        return pd.DataFrame(columns(results))


def _quiet_data_context() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False),
                        ("enable_operator_progress_bars", False), ("verbose_stats_logs", False)):
        if hasattr(ctx, name):
            setattr(ctx, name, value)


def _explained(e: ConnectionError, address: str) -> ConnectionError:
    """Ray reports a cluster that refused this driver's (missing) token as "Failed to connect to Ray cluster at
    ...", its cause only in the chained error's text: say so, and how to pass the cluster's token."""
    chain, x = [], e
    while x is not None and len(chain) < 5:
        chain.append(str(x))
        x = x.__cause__ or x.__context__
    if not any("InvalidAuthToken" in c or "AuthenticationError" in c for c in chain):
        return e
    return ConnectionError(
        f"the Ray cluster at {address} requires token authentication and refused this driver's token: set "
        "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN); "
        "`ray start` turns token authentication on when ~/.ray/auth_token exists (docs/cluster.md)")


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """ConnectionError, at once, when nothing answers at a host:port (or ray://host:port) address: Ray itself
    retries an unreachable head for ever, so a mistyped address would leave a run waiting silently (the app's
    cluster runs show it as running, with no film scored). "auto" is Ray's own lookup and is left to it."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: Ray's own parser says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"the Ray cluster at {address} cannot be reached ({e.strerror or e})") from None


@contextmanager
def session(address: str | None = None, spill_dir: str | None = None, temp_dir: str | None = None,
            num_cpus: int | None = None) -> Iterator[dict]:
    """Connect to Ray (`address`: "auto", "host:port" or "ray://host:port") or start a private local
    instance sized to this machine; shut it down (and remove its temporary folder) at the end.
    Yields {"cpus": the cluster's CPUs, "local": whether this session started it}."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():  # e.g. a test that already joined a cluster
        yield {"cpus": ray.cluster_resources().get("CPU", 1.0), "local": False}
        return
    own_tmp = None
    kw = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address in LOCAL:
        if temp_dir is None:
            own_tmp = temp_dir = tempfile.mkdtemp(prefix="covidxr-ray-")
        system = {} if spill_dir else {"automatic_object_spilling_enabled": False}
        if spill_dir:
            kw["object_spilling_directory"] = os.path.abspath(spill_dir)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 _temp_dir=os.path.abspath(temp_dir), _system_config=system, **kw)
    else:
        check_reachable(address)
        try:
            ray.init(address=address, **kw)
        except ConnectionError as e:
            raise _explained(e, address) from e
    try:
        _quiet_data_context()
        yield {"cpus": ray.cluster_resources().get("CPU", 1.0), "local": address in LOCAL}
    finally:
        ray.shutdown()
        if own_tmp:
            shutil.rmtree(own_tmp, ignore_errors=True)


def stream(records: Sequence[dict], *, weights=None, threads: int | None = None, threshold: float | None = None,
           include_non_chest: bool = False, batch_size: int = 16, workers: int | None = None,
           address: str | None = None, spill_dir: str | None = None, temp_dir: str | None = None,
           site: str | None = None, **_ignored) -> Iterator[list[dict]]:
    """Result records, a block (one batch) at a time, in the order batches finish."""
    from ..classifier import DEFAULT_WEIGHTS

    if not records:
        return
    with session(address, spill_dir, temp_dir) as info:
        import ray.data

        workers = max(1, int(workers or info["cpus"]))
        ds = ray.data.from_items(list(records), override_num_blocks=max(1, math.ceil(len(records) / batch_size)))
        # Ray Data's defaults for an actor pool: spread over the nodes, actors restarted and their
        # batches retried without limit (max_restarts=-1, max_task_retries=-1).
        ds = ds.map_batches(
            Scorer, batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=ACTOR_CPUS, fn_constructor_kwargs={"weights": str(weights or DEFAULT_WEIGHTS), "threads": threads,
                                                        "threshold": threshold, "include_non_chest": include_non_chest,
                                                        "site": site})
        for block in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0):
            yield block.to_dict("records")
