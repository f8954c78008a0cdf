"""Root of the test suite.

Its presence puts ``tests/`` on ``sys.path`` (pytest's default ``prepend`` import mode adds
the directory of every ``conftest.py`` outside a package), so test modules in any
subdirectory import the shared helpers kept here, e.g. ``from fixture_datasets import
write_cub_fixture``. Benchmarks add ``tests/`` to their path themselves.
"""

# The numerical profile (dml_study.determinism) is set when dml_study is imported and read
# by each library once, when it loads. Importing it here, before any test module imports
# faiss, numpy's BLAS or torch, makes the whole suite run under the profile whatever the
# collection order (a test module importing faiss first used to run faiss unpinned).
import dml_study  # noqa: F401
