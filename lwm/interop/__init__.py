"""Interoperability with other checkpoint formats (HF transformers LLaMA)."""
