"""The end-to-end demo (`lwm demo` / `make demo`): generated data, staged training, evals."""
