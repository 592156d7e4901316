"""Benchmark runs side by side: each task a worker process with one torch thread, all started at the same moment,
so their seconds are measured under the same load and compare as ratios (equal_epochs, nerv_sizing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable

from codec.errors import UserError


def worker(run: Callable[[dict], dict], task: dict) -> int:
    """The worker's side (`python -m MODULE --worker TASK`): run(task) with one thread, its row on stdout."""
    import torch

    torch.set_num_threads(1)
    os.environ["NCODEC_THREADS"] = "1"
    try:
        row = run(task)
    except UserError as e:
        row = {"error": str(e)}
    print("RESULT " + json.dumps(row), flush=True)
    return 0


def run_together(module: str, tasks: list[dict], group: int, keys: tuple[str, ...]) -> list[dict]:
    """Run `python -m module --worker TASK` for every task at once; each row carries the task's `keys` and `group`
    (a worker that printed no row gets its last stderr line as `error`)."""
    env = {**os.environ, "NCODEC_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [(t, subprocess.Popen([sys.executable, "-m", module, "--worker", json.dumps(t)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
             for t in tasks]
    out = []
    for t, p in procs:
        stdout, stderr = p.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        row = json.loads(lines[-1][7:]) if lines else {"error": (stderr.strip().splitlines() or ["?"])[-1]}
        out.append({**{k: t[k] for k in keys if k in t}, "group": group, **row})
    return out
