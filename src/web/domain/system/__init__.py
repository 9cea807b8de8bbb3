"""Probes and metrics: /health, /ready, /metrics."""
