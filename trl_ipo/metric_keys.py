"""The names of the ``ipo/*`` metrics (defined once; no heavy imports, so plotting and the CLI can use them).

``ipo/delta`` (mean Δ), ``ipo/target`` (mean target), ``ipo/residual`` (mean Δ − target), ``ipo/sq_error``
(mean (Δ − target)², the IPO term before WPO weighting), ``ipo/wpo_weight`` (mean WPO weight); see
:mod:`trl_ipo.metrics`. Evaluation logs prefix them with ``eval_``.
"""

DELTA, TARGET, RESIDUAL, SQ_ERROR, WPO_WEIGHT = (
    "ipo/delta",
    "ipo/target",
    "ipo/residual",
    "ipo/sq_error",
    "ipo/wpo_weight",
)
IPO_KEYS = (DELTA, TARGET, RESIDUAL, SQ_ERROR)
