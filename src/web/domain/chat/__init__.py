"""Billed chat: the one place where prices, holds and captures meet generation; and the
per-user conversation store."""
