"""Ring, Ulysses and hybrid attention across 2 local processes (jax.distributed, CPU collectives
over gloo)."""

import os
import pathlib
import subprocess
import sys

import portpicker
import pytest

WORKER = pathlib.Path(__file__).with_name("ring_worker.py")


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode, devices", [("ring", 1), ("alltoall", 4)])
def test_attention_across_two_processes(mode, devices):
    """`ring`: sp = 2, one device per process. `alltoall`: 4 devices per process, ulysses over
    all 8 and hybrid 4 x 2 with each all-to-all group spanning both processes."""
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(port), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{mode} attention across 2 processes did not finish within 240 s (hang?)")
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0 and f"OK process {i}" in out, f"process {i}:\n{out[-3000:]}"
