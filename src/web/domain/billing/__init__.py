"""Balance, transaction history (cursor pages, filters, CSV) and usage per day and model."""
