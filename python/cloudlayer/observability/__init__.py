"""Logs (structlog, card data masked), Prometheus metrics (multi-process) and health/readiness bodies."""
