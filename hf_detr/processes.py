"""How many processes a run has: the launcher mistake that leaves a multi-process run with one."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

logger = logging.getLogger("hf_detr")

MULTI_PROCESS_CPU_COMMAND = "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N"


def warn_fewer_processes(num_processes: int, environ: Mapping[str, str] | None = None) -> bool:
    """Warn (and return True) when a launcher asked for several processes but this run got one:
    `accelerate launch --cpu --num_processes N` starts a single process, to which it hands
    MASTER_ADDR and MASTER_PORT but no WORLD_SIZE (which a multi-process launch always sets)."""
    environ = os.environ if environ is None else environ
    if num_processes > 1 or "WORLD_SIZE" in environ:
        return False
    if not (environ.get("MASTER_ADDR") and environ.get("MASTER_PORT")):
        return False
    logger.warning(
        "This run has 1 process, but a launcher asked for more: MASTER_ADDR and MASTER_PORT are set and "
        "WORLD_SIZE is not (`accelerate launch --cpu --num_processes N` starts one process). For N "
        "processes on CPU, launch with `%s ...`.",
        MULTI_PROCESS_CPU_COMMAND,
    )
    return True


__all__ = ["MULTI_PROCESS_CPU_COMMAND", "warn_fewer_processes"]
