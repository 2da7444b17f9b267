"""What the training loops (gate training, edge adaptation) share: data-parallel ranks (torchrun
sets ``WORLD_SIZE``; one process runs alone) and when to checkpoint and stop."""

from __future__ import annotations

import os
from typing import Any


def data_parallel() -> tuple[Any, int, int]:
    """(torch.distributed or None, this rank, world size); starts the gloo group when torchrun asked for one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def checkpoint_due(step: int, cfg: Any) -> tuple[bool, bool]:
    """(checkpoint after ``step``?, stop after it?) for a config with steps, checkpoint_every, stop_after.

    ``stop_after`` ends a time-sliced job early (with a checkpoint, for ``--resume``).
    """
    done = step + 1
    stop = cfg.stop_after is not None and done >= cfg.stop_after and done < cfg.steps
    return done % cfg.checkpoint_every == 0 or done == cfg.steps or stop, stop
