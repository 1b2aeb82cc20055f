"""The job service: REST API, persistence and the `lsq` command line."""
