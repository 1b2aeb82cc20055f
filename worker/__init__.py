"""Celery worker: runs lsq jobs handed over by the API."""
