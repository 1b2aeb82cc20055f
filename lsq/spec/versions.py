"""The versions of the job spec's JSON form, and how a stored document is brought up to date."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The version of the spec's JSON form. Stored with every job; a change that would make stored
# specs invalid bumps it and adds the function that upgrades the previous version's documents.
# An experiment's base is upgraded the same way (the service's stored_experiment_spec); an
# upgrade that renames a field must also reach its grid and variants' overrides.
SPEC_VERSION = 2


def _bn_reestimate_was_off(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 re-estimates batch norms by default; a version-1 spec without the field ran
    without."""
    training = data.get("training")
    if training is None or isinstance(training, dict):
        data = {**data, "training": {"bn_reestimate": 0, **(training or {})}}
    return data


# The upgrade from each version to the next.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _bn_reestimate_was_off,
}


def upgrade_spec(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A spec document stored at `version`, brought to SPEC_VERSION."""
    for v in range(version, SPEC_VERSION):
        data = UPGRADES[v](data)
    return data
