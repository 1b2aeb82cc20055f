"""HTTP routes; thin, the queries live in api.service.store (a module per domain)."""
