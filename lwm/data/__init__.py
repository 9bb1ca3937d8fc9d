"""Data: tokenizers, field syntax, array_record datasets, packed grain loading, synthetic tasks."""
