"""Setting up a training run: processes, device, seeds, the start-up banner, and what the main process writes.

One process per device under torchrun (DistributedDataParallel), or a single process. Every process
seeds its own random streams (each draws its own augmentation; DDP gives every process rank 0's initial
weights); only the main process prints, writes metrics and saves checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import distributed
from .config import Config, RunSection
from .distributed import DistributedEnv
from .files import check_writable, output_folder_lock
from .metrics import MetricsLog
from .training_state import BEST, LAST, atomic_save, seed_everything


@dataclass
class Run:
    """A training run in progress: this process's place in it and the run's output folder."""

    env: DistributedEnv
    output_dir: Path
    command: str  # "pvt train", "pvt det-train"...: how the run presents itself

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def say(self, text: str) -> None:
        """Print on the main process only."""
        if self.is_main:
            tqdm.write(text)

    def banner(
        self, *, model: str, params: int, classes: int, data: str, train_size: int, val_size: int, batch: int,
        accumulate_steps: int = 1, precision: str, optimizer: str, schedule: str, resumed: str | None = None,
    ) -> None:
        """What the run trains, on what, how, and where it writes."""
        world = self.env.world_size
        total = f"{batch} x {world}" + (f" x {accumulate_steps} accumulated" if accumulate_steps > 1 else "")
        self.say(f"{self.command}: {model} ({params / 1e6:.2f}M params), {classes} classes; "
                 f"{data}: {train_size} training / {val_size} held-out images")
        self.say(f"  {world} process(es) on {self.env.device.type}, {precision}; batch {total} = "
                 f"{batch * world * accumulate_steps}, {optimizer}, {schedule}")
        self.say(f"  output {self.output_dir}" + (f" ({resumed})" if resumed else ""))

    def start_records(self, config: Config, resumed_at: int, key: str = "epoch") -> MetricsLog | None:
        """The metrics log (None except on the main process), after writing the resolved config beside it."""
        if not self.is_main:
            return None
        config.save(self.output_dir / "config.yaml")
        return MetricsLog(self.output_dir, resumed_at, key)

    def save(self, state: dict[str, Any], best: bool) -> None:
        """``last.pth``, and ``best.pth`` too when ``best`` (main process only)."""
        if not self.is_main:
            return
        atomic_save(state, self.output_dir / LAST)
        if best:
            atomic_save(state, self.output_dir / BEST)


@contextmanager
def start_run(section: RunSection, command: str) -> Iterator[Run]:
    """Join the processes torchrun started (if any), pick the device and seed this process's random streams."""
    env = distributed.setup(section.device)
    try:
        output_dir = Path(section.output_dir)
        with ExitStack() as held:
            if env.is_main:
                check_writable(output_dir, f"run.output_dir {output_dir}",
                               "choose a folder you can write with --output_dir")
                # One run per folder: a second would interleave its records and checkpoints with this one's.
                held.enter_context(output_folder_lock(output_dir, command))
            seed_everything(section.seed + env.rank)
            yield Run(env, output_dir, command)
    finally:
        distributed.cleanup()
