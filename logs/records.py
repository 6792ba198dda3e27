"""The typed record `/v1` hands the log writer for each request: one `RequestLog` row to be."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """The values of one RequestLog row, by column (`*_id` for the links).

    Every field is required, so a misspelt or missing one fails where the
    record is made, never as a silently stored default; a test holds the
    fields to the table's columns.
    """

    created_at: datetime
    request_id: str
    user_id: int | None
    username: str
    api_key_id: int | None
    key_prefix: str
    model: str
    endpoint: str
    path: str
    status: int
    outcome: str  # a logs.models.Outcome value
    stream: bool
    latency_ms: int | None
    ttft_ms: int | None
    input_units: int  # all of them, cached ones included
    cache_read_units: int
    cache_write_units: int
    output_units: int
    reasoning_units: int
    usage_estimated: bool
    cost: Decimal
    cost_unknown: bool
    prompt_text: str
    completion_text: str
    error: str
    attempts: list
