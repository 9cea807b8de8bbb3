"""The OpenAI-compatible API (/v1): wire translation only; billing is the chat service's."""
