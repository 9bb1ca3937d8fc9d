"""The fused Pallas attention kernels: kernel bodies (kernels.py), their `pallas_call` wrappers
(calls.py) and the custom-VJP op with the xla/pallas choice (ops.py). `blockwise` runs ops.py's op
on one device; `ring` runs calls.py's kernels once per ring step (lwm/attention/ring_steps.py)."""
