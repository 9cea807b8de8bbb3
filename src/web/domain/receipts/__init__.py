"""Receipts of settled chat replies, the key that signs ledger checkpoints, and the offline
check of a receipt (`ledgerchat verify`)."""
