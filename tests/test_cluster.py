"""Races on a real local Dask cluster of two worker processes: the same runs.jsonl as a local race,
and a run whose worker is killed is redone once (from its checkpoint) while finished runs are not."""

import functools
import json
import os
import signal

import pytest
import torch

distributed = pytest.importorskip("distributed")

from sgdlab.lab.runner import run_race  # noqa: E402
from sgdlab.lab.specs import parse_spec  # noqa: E402
from sgdlab.lab.tasks import Task  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
        yield client
        client.close()
        cluster.close()


class KillOnce:
    """Cross-entropy that kills its worker process mid-run, once: in seed 1's second epoch, unless
    ``marker`` exists (it creates it first). Logs each training call's (pid, seed) to ``log``."""

    def __init__(self, marker: str, log: str) -> None:
        self.marker, self.log, self.calls = marker, log, 0

    def __call__(self, outputs, targets):
        if torch.is_grad_enabled():
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()} {torch.initial_seed()}\n")
            if torch.initial_seed() == 1:
                self.calls += 1
                if self.calls == 5 and not os.path.exists(self.marker):
                    open(self.marker, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)
        return torch.nn.functional.cross_entropy(outputs, targets)


def tiny_task(loss=torch.nn.functional.cross_entropy) -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return Task("tiny-cluster", functools.partial(torch.nn.Linear, 4, 3), x[:48], y[:48], x[48:], y[48:],
                loss=loss, epochs=3, batch_size=16, lr={"sgd": 0.1})


def _log(path):
    rows = [json.loads(line) for line in (path / "runs.jsonl").read_text().splitlines()]
    keyed = {(r["run"], r["epoch"], r["step"]): {k: v for k, v in r.items() if k != "time"} for r in rows}
    assert len(keyed) == len(rows)  # no record twice
    return keyed


def test_a_race_on_a_two_worker_cluster_logs_what_a_local_race_logs(client, tmp_path):
    specs = [parse_spec(t) for t in ("sgd", "adam", "swats")]  # swats: units of its own
    run_race(tiny_task(), specs, seeds=2, workers=1, out=tmp_path / "local", progress=False)
    result = run_race(tiny_task(), specs, seeds=2, workers=1, out=tmp_path / "cluster", progress=False,
                      cluster=client)
    assert [run.status for run in result.runs] == ["finished"] * 6
    assert _log(tmp_path / "cluster") == _log(tmp_path / "local")


def test_the_run_of_a_killed_worker_is_redone_once_and_finished_runs_never(client, tmp_path):
    log = tmp_path / "calls.log"
    task = tiny_task(KillOnce(str(tmp_path / "killed"), str(log)))
    spec = parse_spec("sgd")
    run_race(tiny_task(), [spec], seeds=3, workers=1, out=tmp_path / "local", progress=False,
                     population=False)
    result = run_race(task, [spec], seeds=3, workers=1, out=tmp_path / "cluster", progress=False,
                      population=False, cluster=client)
    assert (tmp_path / "killed").exists()  # a worker did die
    assert [run.status for run in result.runs] == ["finished"] * 3
    assert _log(tmp_path / "cluster") == _log(tmp_path / "local")
    calls = [line.split() for line in log.read_text().splitlines()]
    processes = {seed: {pid for pid, s in calls if s == seed} for seed in ("0", "1", "2")}
    steps = {seed: sum(1 for _, s in calls if s == seed) for seed in ("0", "1", "2")}
    assert len(processes["1"]) == 2  # the killed run, then its redo on another worker
    assert len(processes["0"]) == len(processes["2"]) == 1
    assert steps["0"] == steps["2"] == 9  # 3 epochs x 3 steps, trained once
    # Killed in its 5th step (epoch 2's second), the redo resumed from the checkpoint of epoch 1:
    # the two steps of epoch 2 were trained again, nothing before them.
    assert steps["1"] == 9 + 2


def test_a_cluster_address_that_cannot_be_used_is_one_line_and_exit_code_2(capsys):
    from sgdlab.cli import main

    assert main(["compare", "--task", "digits", "--cluster", "local:many", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sgdlab compare: error: --cluster local:many:") and error.count("\n") == 1
