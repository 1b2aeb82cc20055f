"""The service core: jobs, experiments, owners and their limits, the queue and the store.
No HTTP here (api.web is the face); the worker and the CLI use it too."""
