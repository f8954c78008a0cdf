"""Running a whole study: the grid, then the notebooks, then the report, published atomically.

This subpackage owns the order of a study (:mod:`~dml_study.study.pipeline.runner`:
``run_study`` trains the grid through a launcher, executes the study notebooks with
papermill, renders every page and the index in a staging directory and replaces
``results/<study>/`` only when everything succeeded). It is the top of the study's layers
(plan → tiers → launch → analysis → report → pipeline); only the command line
(:mod:`dml_study.study.__main__`) imports it.
"""
