"""One process of the 2-process attention tests (run by tests/test_attention_multiprocess.py).

Usage: python tests/ring_worker.py PROCESS_ID PORT [ring|alltoall]. `ring` (default): each process
owns one CPU device; the mesh puts `sp` = 2 across the processes; ring attention, zigzag and
contiguous. `alltoall`: each process owns 4 CPU devices; `ulysses` over all 8 (its all-to-all
crosses the processes) and `hybrid` with ulysses = 4 on a device order that interleaves the
processes (each all-to-all group spans both; the 2-way ring crosses them too). Prints one line
starting with "OK" when the forward and gradients (packed, causal) match dense computed locally
on the full host inputs.
"""

import sys


def main() -> None:
    process_id, port = int(sys.argv[1]), int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "ring"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lwm.attention import dense_attention, make_attention
    from lwm.attention.config import AttentionConfig
    from lwm.sharding import make_mesh
    from lwm.sharding.mesh import MESH_AXES

    per_process = 1 if mode == "ring" else 4
    assert jax.process_count() == 2 and len(jax.devices()) == 2 * per_process, jax.devices()
    mesh = make_mesh(dict(sp=2 * per_process))
    rng = np.random.default_rng(0)  # same inputs in both processes
    b, t, n, kh, h = 2, 32, 4 if mode == "ring" else 8, 2, 8  # 8 heads: 1 per device
    host = {
        "q": rng.standard_normal((b, t, n, h), np.float32),
        "k": rng.standard_normal((b, t, kh, h), np.float32),
        "v": rng.standard_normal((b, t, kh, h), np.float32),
        "w": rng.standard_normal((b, t, n, h), np.float32),
    }
    seg = np.stack([np.repeat([1, 2, 3], [5, 20, 7]), np.repeat([4, 5, 0], [16, 10, 6])])
    host["seg"] = seg.astype(np.int32)

    def to_global(x, mesh):
        spec = P(None, "sp", *([None] * (x.ndim - 2)))
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])

    def dense_loss(q, k, v):
        out = dense_attention(q, k, v, segment_ids_bt=jnp.asarray(host["seg"]), causal=True)
        return jnp.sum(out * host["w"]), out

    (_, want), want_grads = jax.jit(jax.value_and_grad(dense_loss, (0, 1, 2), has_aux=True))(
        host["q"], host["k"], host["v"]
    )

    if mode == "ring":
        cases = [(dict(backend="ring", layout=layout), mesh) for layout in ("zigzag", "contiguous")]
    else:
        by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
        mixed = [d for pair in zip(*by_process) for d in pair]  # p0, p1, p0, p1, ...
        mixed_mesh = jax.sharding.Mesh(np.asarray(mixed).reshape(1, 1, 1, 8), MESH_AXES)
        cases = [
            (dict(backend="ulysses"), mesh),
            (dict(backend="hybrid", ulysses=4, layout="zigzag"), mixed_mesh),
        ]
    for fields, case_mesh in cases:
        layout = fields.get("layout", "natural")
        cfg = AttentionConfig(query_chunk_size=4, key_chunk_size=4, **fields)
        op = make_attention(cfg, causal=True, mesh=case_mesh)

        @jax.jit
        def run(q, k, v, w, seg, op=op):
            def loss(q, k, v):
                out = op(*(op.to_layout(x) for x in (q, k, v)), op.to_layout(seg))
                out = op.from_layout(out)
                return jnp.sum(out * w), out

            return jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)

        args = {name: to_global(x, case_mesh) for name, x in host.items()}
        (_, out), grads = run(args["q"], args["k"], args["v"], args["w"], args["seg"])
        got = [multihost_utils.process_allgather(x, tiled=True) for x in (out, *grads)]
        for name, g, w in zip(["out", "dq", "dk", "dv"], got, [want, *want_grads]):
            err = np.linalg.norm(g - np.asarray(w)) / np.linalg.norm(np.asarray(w))
            assert err <= 1e-5, f"{fields['backend']} {layout} {name}: relative error {err}"
    print(f"OK process {process_id}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
