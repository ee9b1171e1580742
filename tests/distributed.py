"""One training run alone and split over two torchrun processes, for the tests that compare the two."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvtv2.cli.main import main
from pvtv2.engine.training_state import read_training_checkpoint

REPO = Path(__file__).resolve().parents[1]


def det_train_alone_and_in_two_processes(
    config: Callable[[str, int], Path], tmp_path: Path, batch: int = 4
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``config(name, batch)`` writes a det-train config whose output_dir is ``tmp_path / name``: trained with
    ``batch`` in this process and with ``batch // 2`` in each of two gloo processes. Returns both checkpoints
    and the two-process run's standard output."""
    assert main(["det-train", "--config", str(config("one", batch))]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pvtv2", "det-train", "--config", str(config("two", batch // 2))]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    single = read_training_checkpoint(tmp_path / "one" / "last.pth")
    pair = read_training_checkpoint(tmp_path / "two" / "last.pth")
    return single, pair, finished.stdout
