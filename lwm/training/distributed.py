"""Multi-process start-up: `jax.distributed.initialize` from the environment.

`scripts/launch_local.sh` sets LWM_COORDINATOR / LWM_NUM_PROCESSES / LWM_PROCESS_ID for local
CPU runs (collectives over gloo). On clusters (TPU pods, SLURM, ...) set LWM_DISTRIBUTED=1 and jax
auto-detects everything. Must run before any other jax call that touches devices.
"""

from __future__ import annotations

import os

_initialized = False


def maybe_initialize_distributed() -> bool:
    """Initialises jax.distributed when the environment asks for it; returns whether it did."""
    global _initialized
    if _initialized:
        return True
    import jax

    coordinator = os.environ.get("LWM_COORDINATOR")
    if coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["LWM_NUM_PROCESSES"]),
            process_id=int(os.environ["LWM_PROCESS_ID"]),
        )
        _initialized = True
    elif os.environ.get("LWM_DISTRIBUTED", "") not in ("", "0"):
        jax.distributed.initialize()
        _initialized = True
    if _initialized:
        from lwm.training.peer_watchdog import start_peer_watchdog

        start_peer_watchdog(jax.process_index(), jax.process_count())
    return _initialized
