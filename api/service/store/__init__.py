"""Every query of the service, a module per domain: jobs, experiments, epochs, the worker's
side (leases, publishing, retention) and Idempotency-Keys. The API and the worker both go
through these functions.

Functions take a Session and leave committing to the caller (one short transaction each:
``api.service.db.session_scope`` or the API's per-request session).
"""
