"""The service's domain errors; api.web.errors gives each its HTTP status and body."""

from __future__ import annotations


class JobNotFound(LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class ExperimentNotFound(LookupError):
    def __init__(self, experiment_id: int) -> None:
        super().__init__(f"experiment {experiment_id} does not exist")


class JobConflict(Exception):
    """The request does not apply to the job in its current state."""


class InvalidField(ValueError):
    """A value that is well-formed but not acceptable here; `field` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class TooManyJobs(Exception):
    """The owner has as many unfinished jobs as the service allows."""


class StorageFull(Exception):
    """The owner's jobs hold as many bytes as the service allows."""


class KeyInUse(Exception):
    """An Idempotency-Key whose first request is still being handled."""


class UploadNotFound(LookupError):
    def __init__(self, upload_id: int) -> None:
        super().__init__(f"upload {upload_id} does not exist")
