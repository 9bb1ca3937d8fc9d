"""Multi-process failure: a process that dies must not leave the others hanging.

Two paths end a job whose peer died with one line and a non-zero status (`EXIT_PEER_LOST`)
instead of a hang or an abort with a C++ stack:
- a collective in flight fails at once (gloo: "Connection reset by peer"); `lwm train` reports it
  (`peer_failure_message`) and leaves with `os._exit`, skipping jax.distributed's shutdown
  barrier, which would wait for the dead process and then abort;
- a process that is not in a collective (saving, loading data, compiling) is told by a watchdog
  thread: every process bumps its own counter in the coordination service's key-value store
  every `PERIOD_S`; when a peer's counter has not moved for `LWM_PEER_TIMEOUT_S` (default 45 s,
  below jax's own 100 s heartbeat timeout, whose ending is a fatal abort), or the store is gone
  (process 0 hosts it), the watchdog prints one line and exits the process.
A rerun of every process resumes from the last checkpoint. A process that is exiting normally
stops its watchdog first (an atexit hook, which runs before jax.distributed's own shutdown):
otherwise the shutdown's closed store read as a lost coordinator and a finished run exited 3.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

EXIT_PEER_LOST = 3
PERIOD_S = 1.0
_PREFIX = "lwm_alive"
_EXITING = threading.Event()
"""Set at normal interpreter exit: the watchdog then ends quietly."""


def peer_timeout_s() -> float:
    return float(os.environ.get("LWM_PEER_TIMEOUT_S", "45"))


def _exit(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)


def start_peer_watchdog(process_id: int, num_processes: int) -> threading.Thread | None:
    """Starts the daemon thread (once jax.distributed is initialised); None for one process."""
    if num_processes < 2:
        return None
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        return None
    timeout = peer_timeout_s()
    # atexit runs last-registered first: this runs before jax.distributed's shutdown hook.
    atexit.register(_EXITING.set)

    def run() -> None:
        beat = 0
        last_seen: dict[int, tuple[str, float]] = {}
        started = time.monotonic()
        while True:
            beat += 1
            try:
                client.key_value_set(f"{_PREFIX}/{process_id}", str(beat), allow_overwrite=True)
                values = dict(client.key_value_dir_get(f"{_PREFIX}/"))
            except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
                if _EXITING.is_set():
                    return  # this process is shutting down jax.distributed itself
                _exit(
                    f"lwm: error: lost the coordinator of this {num_processes}-process job "
                    f"({type(e).__name__}); rerun every process to resume from the last "
                    "checkpoint"
                )
            now = time.monotonic()
            for peer in range(num_processes):
                if peer == process_id:
                    continue
                value = values.get(f"{_PREFIX}/{peer}")
                seen = last_seen.get(peer)
                if value is not None and (seen is None or seen[0] != value):
                    last_seen[peer] = (value, now)
                    continue
                since = now - (seen[1] if seen else started)
                if since > timeout and not _EXITING.is_set():
                    _exit(
                        f"lwm: error: process {peer} of {num_processes} stopped responding "
                        f"({since:.0f}s without a heartbeat); rerun every process to resume "
                        "from the last checkpoint"
                    )
            time.sleep(PERIOD_S)

    thread = threading.Thread(target=run, name="lwm-peer-watchdog", daemon=True)
    thread.start()
    return thread


def is_peer_failure(e: BaseException) -> bool:
    """Whether an exception raised in a multi-process job comes from a lost peer: a runtime
    error of a collective, or any error whose text names a failed gloo transfer (orbax's
    checkpoint barrier re-raises the collective's failure as a ValueError), along the cause
    chain."""
    runtime = ("JaxRuntimeError", "XlaRuntimeError")
    weak = ("Connection closed", "heartbeat", "UNAVAILABLE")
    strong = ("Gloo", "Connection reset by peer")
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if any(s in text for s in strong):
            return True
        if type(e).__name__ in runtime and any(s in text for s in weak):
            return True
        e = e.__cause__ or e.__context__
    return False


def exit_on_peer_failure(e: BaseException, command: str) -> None:
    """For a lost peer: one line, then `os._exit` (never returns); otherwise does nothing."""
    if not is_peer_failure(e):
        return
    first = " ".join(str(e).split())
    first = first if len(first) <= 160 else first[:157] + "..."
    _exit(
        f"lwm {command}: error: another process of this job failed ({first}); rerun every "
        "process to resume from the last checkpoint"
    )
