"""Root of the test suite.

Its presence puts ``tests/`` on ``sys.path`` (pytest's default ``prepend`` import mode adds
the directory of every ``conftest.py`` outside a package), so test modules in any
subdirectory import the shared helpers kept here, e.g. ``from fixture_datasets import
write_cub_fixture``. Benchmarks add ``tests/`` to their path themselves.
"""
