"""The KV cache: its pytree types, creation, growth, row copies, shardings and the sharded slot
write (`kv_cache.py`, `slots.py`, `write.py`). The attention kernels that read it live in
`lwm.attention.cached`; the model takes one through `Transformer.init_cache` / `__call__`."""
