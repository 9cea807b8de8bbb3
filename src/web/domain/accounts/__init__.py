"""Users, passwords, access and refresh tokens, login lockout."""
