"""API keys for the OpenAI-compatible API: create, list, revoke, authenticate."""
