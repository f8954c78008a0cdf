"""Planning a study: what to train, before anything runs.

This subpackage owns the study file (:mod:`~dml_study.study.plan.config`:
``studies/<name>.yaml`` → :class:`~dml_study.study.plan.config.StudyConfig`, typed, with
did-you-mean errors), the grid of runs it describes (:mod:`~dml_study.study.plan.grid`:
every (group, dataset, variant, seed) cell → a :class:`~dml_study.study.plan.grid.RunSpec`
with the run's complete parameters and its one name, :func:`dml_study.config.run_name`) and
the derived smoke study (:mod:`~dml_study.study.plan.smoke`). It imports no other part of
:mod:`dml_study.study`: launchers, tiers, analysis and the report all ask the plan.
"""
