"""The typed record the proxy hands the log writer is the RequestLog table's row."""

from dataclasses import fields

import pytest

from logs.models import RequestLog
from logs.records import RequestRecord


def test_the_record_has_exactly_the_tables_columns():
    columns = {f.attname for f in RequestLog._meta.concrete_fields if not f.primary_key}

    assert {f.name for f in fields(RequestRecord)} == columns


def test_a_misspelt_field_fails_where_the_record_is_made():
    with pytest.raises(TypeError, match="latency"):
        RequestRecord(latency=5)
