"""sgdlab optimizers under DDP, ZeroRedundancyOptimizer and FSDP2 with two processes (gloo, CPU).

The checks run in tests/distributed_checks.py under torchrun, two launches in all (starting
processes costs more than the checks): the launch runs every check and reports each one, and
each test here asserts one check's outcome. Between the launches this process (no process
group) loads the two-rank checkpoint, trains on, and writes the checkpoint the second launch
resumes on two ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import sgdlab

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_checks as checks  # noqa: E402

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.xdist_group("distributed"),
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
]
WORKER = Path(checks.__file__)


def _launch(phase: str, directory: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(sgdlab.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(WORKER), phase, str(directory)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    results = directory / f"{phase}.json"
    if not results.exists():
        raise AssertionError(f"torchrun {phase} wrote no results (exit {completed.returncode}):\n"
                             f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
    outcome = json.loads(results.read_text())
    outcome["stdout"] = completed.stdout
    return outcome


def _one_process(directory: Path) -> dict[str, str]:
    """The two-rank float32 checkpoint, loaded by one process with whole tensors, trained on
    (compared with the two ranks' own continuation), saved for the second launch; the 8-bit
    checkpoint, widened to float32, loaded into an 8-bit optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
        set_optimizer_state_dict)

    outcomes = {}
    batches = checks.global_batches(9)

    def load(path, model, optimizer, widen=False):
        optim_state = get_optimizer_state_dict(model, optimizer)
        if widen:
            optim_state = sgdlab.optim.widen_state_dict(optim_state)
        saved = {"model": get_model_state_dict(model), "optim": optim_state}
        dcp.load(saved, checkpoint_id=path)
        set_model_state_dict(model, saved["model"])
        set_optimizer_state_dict(model, optimizer, saved["optim"])

    try:
        model = checks.make_model()
        optimizer = sgdlab.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        load(directory / "checkpoint-float32", model, optimizer)
        assert optimizer.state[next(model.parameters())]["step"] == 3
        checks.train(model, optimizer, {}, batches[3:6])
        expected = torch.load(directory / "two_ranks_continued-float32.pt")
        checks.assert_params_close(checks.full_params(model), expected,
                                   "one process resumed from two ranks")
        dcp.save({"model": get_model_state_dict(model),
                  "optim": get_optimizer_state_dict(model, optimizer)},
                 checkpoint_id=directory / "checkpoint-one-process")
        checks.train(model, optimizer, {}, batches[6:9])
        torch.save(checks.full_params(model), directory / "one_process_continued.pt")
        outcomes["one-process-resumes-a-two-rank-checkpoint"] = "ok"
    except Exception as error:  # noqa: BLE001 - reported by the test of that name
        outcomes["one-process-resumes-a-two-rank-checkpoint"] = repr(error)

    try:  # bfloat16 entries are shaped like their parameters: any layout loads them
        model = checks.make_model()
        optimizer = sgdlab.AdamW([{"params": list(model.parameters()),
                                   "state_dtype": torch.bfloat16}], lr=0.01, weight_decay=0.1)
        load(directory / "checkpoint-bfloat16", model, optimizer)
        checks.train(model, optimizer, {}, batches[3:6])
        assert optimizer.state[next(model.parameters())]["exp_avg"].dtype == torch.bfloat16
        expected = torch.load(directory / "two_ranks_continued-bfloat16.pt")
        # the rounding noise follows positions in each rank's flat state: close, not equal
        checks.assert_params_close(checks.full_params(model), expected,
                                   "one process resumed from two ranks, bfloat16",
                                   rtol=0, atol=1e-3)
        outcomes["one-process-resumes-a-two-rank-bfloat16-checkpoint"] = "ok"
    except Exception as error:  # noqa: BLE001
        outcomes["one-process-resumes-a-two-rank-bfloat16-checkpoint"] = repr(error)

    try:
        eight_bit = checks.make_model()
        optimizer = sgdlab.AdamW([{"params": list(eight_bit.parameters()),
                                   "state_dtype": torch.uint8, "min_8bit_size": 0}], lr=0.01)
        load(directory / "checkpoint-8bit-widened", eight_bit, optimizer, widen=True)
        wide = checks.make_model()
        reference = sgdlab.AdamW(wide.parameters(), lr=0.01)
        load(directory / "checkpoint-8bit-widened", wide, reference)
        checks.train(eight_bit, optimizer, {}, batches[3:4])
        checks.train(wide, reference, {}, batches[3:4])
        first = next(eight_bit.parameters())
        assert optimizer.state[first]["exp_avg"].dtype == torch.uint8
        checks.assert_params_close(checks.full_params(eight_bit), checks.full_params(wide),
                                   "8-bit after a widened checkpoint", rtol=0, atol=2e-3)
        outcomes["one-process-loads-a-widened-8bit-two-rank-checkpoint"] = "ok"
    except Exception as error:  # noqa: BLE001
        outcomes["one-process-loads-a-widened-8bit-two-rank-checkpoint"] = repr(error)
    return outcomes


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, str]:
    # Under pytest-xdist every worker that gets one of these tests builds this fixture: the
    # first one launches, the others wait for its outcomes (a lock in the session's directory,
    # which the workers share; test.sh keeps the tests on one worker: xdist_group).
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    saved = base / "distributed-outcomes.json"
    with FileLock(str(base / "distributed.lock")):
        if saved.exists():
            return json.loads(saved.read_text())
        found = _launch_all(tmp_path_factory.mktemp("distributed"))
        saved.write_text(json.dumps(found))
    return found


def _launch_all(directory: Path) -> dict[str, str]:
    first = _launch("two_ranks", directory)
    print(first["stdout"])  # the memory per rank of compact state (pytest -s shows it)
    found = dict(first["checks"])
    with warnings.catch_warnings():  # DCP says it assumes one process: it is meant to
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        found.update(_one_process(directory))
    found.update(_launch("resume", directory)["checks"])
    return found


ONE_PROCESS = ["one-process-resumes-a-two-rank-checkpoint",
               "one-process-resumes-a-two-rank-bfloat16-checkpoint",
               "one-process-loads-a-widened-8bit-two-rank-checkpoint"]


@pytest.mark.parametrize(
    "check", checks.check_names("two_ranks") + ONE_PROCESS + checks.check_names("resume"))
def test_two_processes(outcomes, check):
    assert outcomes.get(check) == "ok", outcomes.get(check, "the check did not run")
