"""Measurements, one module per ``make bench-*`` target: each takes its options, runs on the bundled model
(or the one named), and writes a JSON record (plus a PNG where a picture says more). Figures depend on the
machine, so these are scripts, never timed tests. ``model_card`` measures the bundled model on the test split
and writes ``lambda_function/model/MODEL_CARD.md``.
"""
