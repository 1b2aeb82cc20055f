"""HTTP routes; thin, the queries live in api.store."""
