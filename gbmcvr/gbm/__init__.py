"""LightGBM models: end-to-end and two-step (like -> install given like), and Optuna tuning."""
