"""MLflow tracking, optional (`pip install '.[mlflow]'`; on when LSQ_MLFLOW_TRACKING_URI is
set): each job is an MLflow run with its spec flattened into params, every epoch's metrics at
`step=epoch`, its result, and `model.onnx` and the plots as artifacts; each experiment is a
parent run with its jobs' runs nested under it. A resumed job logs into the run it had.

The worker logs after the store has the epoch, from a thread of its own: an MLflow server that
is down or slow never fails or slows a job. Each request is bounded (a short timeout, one retry),
the first failure stops the logging, and the job ends with a warning that says what was lost.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.service.config import Settings
from api.service.db import session_scope
from api.service.models import Job, JobStatus
from lsq.files import MODEL_ONNX, PLOT, QUANTIZER_PLOT, SENSITIVITY_PLOT
from lsq.metrics import EpochMetrics, RunResult

log = logging.getLogger(__name__)
END_SECONDS = 30.0  # what a job's end waits, at most, for its last logs to reach MLflow
JOB, EXPERIMENT, PARENT = "lsq.job", "lsq.experiment", "lsq.parent"
FOLDER = "lsq.folder"  # a job's or experiment's random folder name: unique across databases
ARTIFACTS = (MODEL_ONNX, PLOT, QUANTIZER_PLOT, SENSITIVITY_PLOT)
# What MLflow takes in a key: letters, digits, _ - . / and spaces (a layer pattern has * or [)
NOT_IN_KEYS = re.compile(r"[^\w\-./ ]")


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A spec's leaves as MLflow params: dotted keys (characters MLflow refuses as _), values
    as text."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = NOT_IN_KEYS.sub("_", f"{prefix}{key}")
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{name}.")
        else:
            out[name[:250]] = str(value)[:500]
    return out


class Tracker:
    """One job's MLflow run, fed from the job's thread, sent from a thread of its own."""

    def __init__(self, settings: Settings, job: dict[str, Any], folder: Path) -> None:
        # MLflow reads these when its client is made: a down server costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        self.settings, self.job, self.folder = settings, job, folder
        self.problem: str | None = None
        self.run: str | None = None
        self.parent: str | None = None
        self._calls: queue.Queue[tuple[Callable[[], None], bool] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._send, name="mlflow", daemon=True)
        self._thread.start()
        self._calls.put((self._open, False))

    def epoch(self, metrics: EpochMetrics) -> None:
        numbers = {k: v for k, v in metrics.model_dump().items() if isinstance(v, int | float)}
        self._calls.put((lambda: self._log_metrics(numbers, metrics.epoch), False))

    def end(self, status: str, result: RunResult | None) -> str | None:
        """Send the result and the files, end the run (and its experiment's, with the
        experiment's last job), wait at most END_SECONDS; the warning for the job when
        something could not be logged."""
        self._calls.put((lambda: self._results(result), False))
        self._calls.put((lambda: self._terminate(status), True))  # tried after a failure too
        self._calls.put(None)
        self._thread.join(END_SECONDS)
        if self._thread.is_alive():
            return f"MLflow: its server did not take the run's logs within {END_SECONDS:.0f} s"
        return self.problem and f"MLflow: logging stopped ({cut_middle(self.problem, 600)})"

    # -- in the sending thread

    def _send(self) -> None:
        while (item := self._calls.get()) is not None:
            call, always = item
            if self.problem is not None and not (always and self.run is not None):
                continue
            try:
                call()
            except Exception as e:  # noqa: BLE001 - any failure of MLflow's is a warning
                self.problem = self.problem or f"{type(e).__name__}: {e}"
                log.warning("job %s: MLflow logging stopped: %s", self.job["id"], e)

    def _open(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.settings.mlflow_tracking_uri)
        name = self.settings.mlflow_experiment
        found = self.client.get_experiment_by_name(name)
        # its runs are training runs (MLflow 3's UI opens such an experiment on its runs)
        kind = {"mlflow.experimentKind": "custom_model_development"}
        self.experiment = (
            found.experiment_id if found else self.client.create_experiment(name, tags=kind)
        )
        tags = {
            JOB: str(self.job["id"]),
            FOLDER: self.job["folder"],
            "lsq.owner": self.job["owner"],
        }
        self.parent = self._parent()
        if self.parent is not None:
            tags["mlflow.parentRunId"] = self.parent
        self.run = (
            self._find(self.job["folder"])
            or self.client.create_run(
                self.experiment, run_name=self.job["name"], tags=tags
            ).info.run_id
        )
        params = flatten(self.job["spec"])
        self.client.log_batch(self.run, params=[_param(k, v) for k, v in params.items()])

    def _parent(self) -> str | None:
        experiment = self.job.get("experiment")
        if experiment is None:
            return None
        tags = {EXPERIMENT: str(experiment["id"]), FOLDER: experiment["folder"], PARENT: "true"}
        return (
            self._find(experiment["folder"])
            or self.client.create_run(
                self.experiment, run_name=experiment["name"], tags=tags
            ).info.run_id
        )

    def _find(self, folder: str) -> str | None:
        """The run of a job or experiment, by its folder name (a resumed job has one already)."""
        query = f"tags.`{FOLDER}` = '{folder}'"
        runs = self.client.search_runs([self.experiment], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def _log_metrics(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _millis()
        metrics = [Metric(k, float(v), now, step) for k, v in numbers.items()]
        self.client.log_batch(self.run, metrics=metrics)

    def _results(self, result: RunResult | None) -> None:
        if result is not None:
            values = result.model_dump()
            final = {f"result.{k}": v for k, v in values.items() if isinstance(v, int | float)}
            self._log_metrics(final, 0)
        for name in ARTIFACTS:
            if (self.folder / name).is_file():
                self.client.log_artifact(self.run, str(self.folder / name))

    def _terminate(self, status: str) -> None:
        self.client.set_terminated(self.run, STATES.get(status, "FAILED"))
        experiment = self.job.get("experiment")
        if self.parent is not None and experiment is not None:
            others = experiment_statuses(experiment["id"], self.job["id"])
            if all(s.finished for s in others):  # this job is the experiment's last
                ok = status == "succeeded" and all(s == "succeeded" for s in others)
                self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")


STATES = {"succeeded": "FINISHED", "cancelled": "KILLED"}


def experiment_statuses(experiment_id: int, but: int) -> list[JobStatus]:
    """The statuses of an experiment's jobs but one."""
    with session_scope() as session:
        query = select(Job.status).where(Job.experiment_id == experiment_id, Job.id != but)
        return list(session.scalars(query))


def cut_middle(text: str, limit: int) -> str:
    """`text` with its middle cut out past `limit` characters: an error's cause is at its end."""
    half = limit // 2
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def start(settings: Settings, job: dict[str, Any], folder: Path) -> Tracker | None:
    """A Tracker for `job` ({id, folder, name, owner, spec, experiment: {id, folder, name} |
    None}) when
    MLflow is configured and installed; None otherwise."""
    if not settings.mlflow_tracking_uri:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log.warning("LSQ_MLFLOW_TRACKING_URI is set but mlflow is not installed: pip install "
                    "'lsq-service[mlflow]'")  # fmt: skip
        return None
    return Tracker(settings, job, folder)
