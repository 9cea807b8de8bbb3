"""Operator actions: credit top-ups, the user list with balances, the ledger audit."""
