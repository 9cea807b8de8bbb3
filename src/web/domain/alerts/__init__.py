"""Alerts: balance and budget-use thresholds, their crossings, and the webhook."""
