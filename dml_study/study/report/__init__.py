"""Rendering the study: figures, tables, self-contained pages and the index.

This subpackage owns what a reader sees: the front page ``index.html``/``README.md`` and
``summary.json`` (:mod:`~dml_study.study.report.index`), the claims scorecard pivoted for
readers and ``claims.csv`` (:mod:`~.scorecard`), its generated block in the project README
(:mod:`~.readme`), the one escaping path of every table (:mod:`~.markup`), paths as the
reader finds them (:mod:`~.paths`), pages rendered from executed notebooks (:mod:`~.pages`:
no script or style from the network, math as MathML), figure style and the figure index
(:mod:`~.plots`, :mod:`~.figures`), report tables (:mod:`~.tables`), the page check (strict
HTML5 parse, tables against their data, paths; in a headless browser too:
:mod:`~.pagecheck`), notebooks in the form JupyterLab saves (:mod:`~.nbtidy`) and the
command line (:mod:`~.cli`). It sits above the analysis and is imported only by the
pipeline (and by the notebooks).
"""
