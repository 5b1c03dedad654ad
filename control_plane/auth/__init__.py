"""Who may call what: API keys, roles and privileges, and the access interceptor."""
