"""Training: cached frozen-Xception features + a small head -> model.keras. Run ``python -m train``."""
