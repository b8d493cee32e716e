"""Where a hybrid VLM's question looks in the video, and what cut tokens leave behind (`python -m hpft.analyze`).

Modules, one job each: `collect` (unreduced per-block scores), `sparsity` and `stability` (pure metrics),
`needles` (probe data), `probing` (cut variants and features), `linear_probe` (the probe), `sections` (metrics
into the `analysis.json` sections), `runner` (the passes over the data), `checks` (startup validation), `plots`
(PNGs), `publish` (loggers).
"""
