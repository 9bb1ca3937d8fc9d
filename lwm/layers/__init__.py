"""Transformer building blocks: norms, rotary embeddings, feed-forward, embeddings, attention."""
