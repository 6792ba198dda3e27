"""Older AetherGate exports brought to the current version's rows before they are checked.

Version 1 gave a model one `endpoint` (a name or null) and an `upstream_name`;
version 2 gives it a list of `deployments`. Like legacy.py, this only renames
and regroups: schema.rows_of then checks the shape and the importer the values.
"""

from typing import Any

from aethergate.backup.schema import VERSION


def current(document: dict) -> tuple[dict, list[str]]:
    """`document`, an AetherGate export of a version import reads, as this version's, with
    warnings for what could not be carried over.

    A version-1 model with an endpoint gets that one deployment (upstream name:
    the row's, else the model's name; weight 1, priority 0); one whose endpoint
    is null gets none. A row without `endpoint` leaves the model's deployments as
    they are, so its `upstream_name` has nowhere to go: it is dropped, with a warning.
    """
    if document.get("version") == VERSION:
        return document, []
    warnings: list[str] = []
    models = document.get("models")
    if not isinstance(models, list):
        return document, warnings  # not a list of rows: rows_of says so
    rows = [_model_v1(index, row, warnings) for index, row in enumerate(models)]
    return {**document, "version": VERSION, "models": rows}, warnings


def _model_v1(index: int, row: Any, warnings: list[str]) -> Any:
    if not isinstance(row, dict):
        return row  # rows_of names it
    row = dict(row)
    if "endpoint" in row:
        endpoint = row.pop("endpoint")
        upstream_name = row.pop("upstream_name", row.get("name"))
        row["deployments"] = (
            [] if endpoint is None else [{"endpoint": endpoint, "upstream_name": upstream_name}]
        )
    elif "upstream_name" in row:
        del row["upstream_name"]
        warnings.append(
            f'models[{index}] ("{row.get("name")}"): upstream_name without endpoint: not '
            "imported (a deployment needs both); the model's deployments are left as they are."
        )
    return row
