"""Scripts that the XLA tests (tests/test_xla.py) run with the .venv-tpu Python."""
