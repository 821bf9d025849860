"""Settings, database, errors, security, queue client."""
