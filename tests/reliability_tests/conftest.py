"""Fixtures of the reliability tests: the shared ones are in ``tests/conftest.py``, helpers in
``_sweep_procs``."""
