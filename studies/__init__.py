"""The laboratory: studies whose results chose the product's defaults (blocks to pool, resize mode, extra
photos, block-14 fine-tuning, int8 settings) and one-off probes. The product (``train``, ``convert``,
``lambda_function``) never imports from here; docs/lab/ holds their logs with dates and commands.
"""
