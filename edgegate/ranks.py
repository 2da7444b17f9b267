"""Data-parallel ranks for the training loops (gate training, edge adaptation): torchrun sets
``WORLD_SIZE``; one process runs alone."""

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
