"""Rendering the study: figures, tables, self-contained pages and the index.

This subpackage owns what a reader sees: the front page ``index.html``/``README.md`` and
``summary.json`` (:mod:`~dml_study.study.report.index`), pages rendered from executed
notebooks (:mod:`~.pages`: no script or style from the network, math as MathML), figure
style and the figure index (:mod:`~.plots`, :mod:`~.figures`), report tables
(:mod:`~.tables`), the page check in a headless browser (:mod:`~.pagecheck`) and notebooks
in the form JupyterLab saves (:mod:`~.nbtidy`). It sits above the analysis and is imported
only by the pipeline.
"""
