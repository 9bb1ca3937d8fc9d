"""Long-context evals: needle-in-a-haystack grids, perplexity vs context length, reports."""
