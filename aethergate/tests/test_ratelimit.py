"""Rate-limit spec parsing."""

import pytest
from django.core.exceptions import ValidationError

from aethergate.lib.ratelimit import Rate, parse_spec, validate_spec


@pytest.mark.parametrize(
    ("spec", "rates"),
    [
        ("", ()),
        ("60/m", (Rate(60, 60),)),
        ("1000/h", (Rate(1000, 3600),)),
        ("5000/d", (Rate(5000, 86400),)),
        ("10/s", (Rate(10, 1),)),
        (" 60/m , 1000/h,5000/d ", (Rate(60, 60), Rate(1000, 3600), Rate(5000, 86400))),
        ("60/minute,2/Day", (Rate(60, 60), Rate(2, 86400))),
    ],
)
def test_it_parses_valid_specs(spec, rates):
    assert parse_spec(spec) == rates
    validate_spec(spec)


@pytest.mark.parametrize(
    "spec", ["60", "60/", "/m", "60/x", "sixty/m", "60/m;10/h", "-1/m", "1.5/m"]
)
def test_it_rejects_malformed_specs_with_the_expected_form(spec):
    with pytest.raises(ValidationError) as error:
        validate_spec(spec)
    assert "COUNT/UNIT" in error.value.messages[0]


def test_it_rejects_a_zero_count():
    with pytest.raises(ValidationError, match="at least 1"):
        validate_spec("0/m")
