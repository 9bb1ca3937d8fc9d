"""lwm: million-token world models in JAX (LLaMA over interleaved video and text, RingAttention)."""

__version__ = "0.1.0"
