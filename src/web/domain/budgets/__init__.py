"""Spending budgets: API key limits, a user's self-set cap, an admin's cap for a user."""
