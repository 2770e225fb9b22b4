"""Fit-loop glue: optimizer and schedule from the config, callbacks, MLflow logging."""
