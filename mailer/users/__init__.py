"""Console users: accounts and roles, Argon2 passwords, TOTP, one-time links, server-side sessions, login throttling."""
