"""The two tiers a run can be trained in, and executing notebooks.

This subpackage owns how one run is trained: the frozen-backbone tier
(:mod:`~dml_study.study.tiers.frozen`: head and proxies on cached backbone features, in the
study process, many seeds in seconds) and the fine-tuned tier, which is ``02_train``
executed by papermill (:mod:`~dml_study.study.tiers.notebooks`: errors that name the
notebook and cell; executed copies without machine paths, :mod:`~.machine_paths`). Both
write the same run directory (:class:`dml_study.training.run_dir.RunDirectory`). It imports
only the plan (and the core packages).
"""
