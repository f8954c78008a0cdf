"""Analysing finished runs: tables, statistics, the claims scorecard.

This subpackage owns what the study concludes from the run directories: collecting runs
into tables (:mod:`~dml_study.study.analysis.collect`), paired statistics and verdicts
(:mod:`~.stats`), the claims scorecard ``claims.json`` (:mod:`~.claims`), per-class and
proxy analyses (:mod:`~.per_class`), dataset views (:mod:`~.dataview`) and published
numbers with their sources (:mod:`~.published`). It reads runs; it never trains one, and it
imports nothing from the report.
"""
