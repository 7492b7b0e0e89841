"""Races on a Dask distributed cluster (``sgdlab compare --cluster ADDRESS``).

Why Dask distributed rather than Ray: it is pure Python (dask + distributed + their dependencies
are about 5 MB of wheels here, against 79 MB for Ray's wheel alone, with its own native
processes), it installs with pip on any platform torch supports, and its scheduler already does
what a race needs: tasks on worker processes of many machines, ``dask worker ADDRESS`` to add a
machine, and a task on a lost worker sent to another one.

Each unit of the race (a population or a single run, :func:`sgdlab.lab.population.plan`) is one
task. The race's checkpoints are what makes a lost worker cheap and a finished run never trained
twice: a run's task saves after every epoch and returns at once when its checkpoint says it has
finished; the scheduler re-sends the task of a lost worker, which resumes from that checkpoint.
This needs the race's ``--out`` directory on storage every worker sees (one machine, NFS, ...).
Records come back with each finished unit and are logged by the process that started the race,
so ``runs.jsonl`` holds the same records as a local race (in another order).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from sgdlab.lab.runner import FAILED, Budget, RunResult

# How often a unit is sent again after its worker was lost (a KilledWorker): once. The scheduler
# of a local cluster started here gives up at the first loss, so this is the only retry; an
# external scheduler may retry on its own first (its ``allowed-failures``), resuming alike.
REDO_LOST = 1


def _unit_task(task: Any, unit: Sequence[Any], budget: Budget, batch_size: int | None,
               checkpoints: Sequence[str | None]) -> list[RunResult]:
    """One unit on a Dask worker: one torch thread, as a local worker process."""
    import torch

    from sgdlab.lab.population import run_unit

    torch.set_num_threads(1)
    return run_unit(task, unit, budget, batch_size, checkpoints, on_eval=lambda r: None,
                    on_progress=lambda key, fraction: None)


def connect(address: str) -> Any:
    """A Dask client for ``address`` (``tcp://host:8786``; ``local:N`` starts a local cluster of N
    worker processes, for trying it out). ConnectionError/OSError with the address if nothing answers."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # an extra, not a dependency
        raise ImportError("--cluster needs Dask distributed: pip install 'sgdlab[cluster]'") from error
    if address.startswith("local:"):
        import dask

        count = address.split(":", 1)[1] or "2"
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"expected local:N with N a positive number of worker processes, got {address!r}")
        workers = int(count)
        dask.config.set({"distributed.scheduler.allowed-failures": 0})  # REDO_LOST decides
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    return Client(address, timeout="10s")


def run_units(address: str | Any, task: Any, units: Sequence[Sequence[Any]], budget: Budget,
              batch_size: int | None, checkpoints: dict, log: Callable[[dict], None], bars: Any) -> dict:
    """Run ``units`` as tasks on the cluster at ``address`` (or a ``distributed.Client``); returns
    ``{(label, seed): RunResult}`` and logs every record as its unit finishes."""
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    client = address if isinstance(address, Client) else connect(address)
    own = client is not address
    results: dict = {}
    try:
        shared = client.scatter(task, broadcast=True)  # the data set once per worker, not per task

        def submit(unit: Sequence[Any], attempt: int) -> Any:
            paths = [checkpoints[(spec.label, seed)] for spec, seed in unit]
            future = client.submit(_unit_task, shared, list(unit), budget, batch_size, paths,
                                   pure=False, key=f"sgdlab-{os.getpid()}-{id(unit)}-{attempt}")
            attempts[future.key] = (unit, attempt)
            return future

        attempts: dict[str, tuple[Sequence[Any], int]] = {}
        pending = as_completed([submit(unit, 0) for unit in units])
        for future in pending:
            unit, attempt = attempts.pop(future.key)
            try:
                unit_results = future.result()
            except KilledWorker as error:
                if attempt < REDO_LOST:  # resumes from its checkpoints on another worker
                    pending.add(submit(unit, attempt + 1))
                    continue
                unit_results = [RunResult("", spec.label, seed, FAILED, [], f"KilledWorker: {error}")
                                for spec, seed in unit]
            except Exception as error:  # noqa: BLE001 - as a local worker that died
                unit_results = [RunResult("", spec.label, seed, FAILED, [], f"{type(error).__name__}: {error}")
                                for spec, seed in unit]
            future.release()  # a finished unit is never computed again, even if its worker goes
            for result in unit_results:
                for record in result.records:
                    log(record)
                results[(result.optimizer, result.seed)] = result
                bars.finish((result.optimizer, result.seed), result)
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    return results
