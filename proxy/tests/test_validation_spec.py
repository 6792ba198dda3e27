"""The validation table (`proxy.validation`) holds to OpenAI's spec: every field the spec gives
an operation's request, with the spec's types, bounds and required fields."""

import pytest

from proxy import validation
from proxy.tests import spec

OPERATIONS = {
    "CreateChatCompletionRequest": validation.CHAT,
    "CreateCompletionRequest": validation.COMPLETIONS,
    "CreateEmbeddingRequest": validation.EMBEDDINGS,
    "CreateImageRequest": validation.IMAGES,
    "CreateSpeechRequest": validation.SPEECH,
    "CreateTranscriptionRequest": validation.TRANSCRIPTION,
    "CreateTranslationRequest": validation.TRANSLATION,
}
SUBJECTS = {
    "minimum": ("number", "integer"),
    "maximum": ("number", "integer"),
    "minItems": ("array",),
    "maxItems": ("array",),
    "maxLength": ("string",),
}


def resolve(node: dict) -> dict:
    while "$ref" in node:
        node = spec.schema(node["$ref"].rsplit("/", 1)[1])
    return node


def properties(name: str) -> tuple[dict, set]:
    """The request schema's properties and required names, `allOf` parts merged."""
    return properties_of(resolve({"$ref": f"#/components/schemas/{name}"}))


def properties_of(node: dict) -> tuple[dict, set]:
    found, required = {}, set(node.get("required", ()))
    for part in node.get("allOf", ()):
        more, needed = properties_of(resolve(part))
        found.update(more)
        required |= needed
    found.update(node.get("properties", {}))
    return found, required


def alternatives(node: dict) -> list[dict]:
    """The non-null schemas a value may match."""
    node = resolve(node)
    options = node.get("oneOf") or node.get("anyOf")
    if options:
        return [alt for option in options for alt in alternatives(option)]
    return [] if node.get("type") == "null" else [node]


def described(node: dict) -> tuple[set, dict]:
    """(JSON types, bounds) the spec gives a field.

    A bound counts when every alternative of the type it bounds has it, alike: `prompt`
    may be an empty array of strings, though its token arrays need one item.
    """
    alts = alternatives(node)
    types = set()
    for alt in alts:
        kind = alt.get("type", "object")  # an object given only by its properties
        types |= (set(kind) if isinstance(kind, list) else {kind}) - {"null"}
    bounds = {}
    for bound, bounded in SUBJECTS.items():
        subject = [alt for alt in alts if alt.get("type") in bounded]
        values = {alt.get(bound) for alt in subject}
        if subject and len(values) == 1 and None not in values:
            bounds[bound] = values.pop()
    if any(alt.get("format") == "int64" for alt in alts):
        bounds.setdefault("minimum", -(2**63))
        bounds.setdefault("maximum", 2**63 - 1)
    if "number" in types:
        types.add("integer")
    return types, bounds


def cases():
    for name, schema in OPERATIONS.items():
        fields, _ = properties(name)
        for field in fields:
            yield pytest.param(name, schema, field, id=f"{name}.{field}")


@pytest.mark.parametrize(("name", "schema", "field"), list(cases()))
def test_each_field_the_spec_gives_is_checked_as_the_spec_types_it(name, schema, field):
    fields, _ = properties(name)
    types, bounds = described(fields[field])
    rule = schema.rules.get(field)

    if field == "model":
        return  # checked before the table: a non-empty string (tested in test_validation.py)
    if field == "file":
        return  # an upload, which the form reader checks (tested in test_forms.py)
    assert rule is not None, f"{field}: not in the table"
    assert set(rule.types) | ({"integer"} if "number" in rule.types else set()) == types
    ours = {
        "minimum": rule.minimum,
        "maximum": rule.maximum,
        "minItems": rule.min_items,
        "maxItems": rule.max_items,
        "maxLength": rule.max_length,
    }
    # The spec writes int64's bounds as the nearest doubles (-9223372036854776000).
    assert {k: float(v) for k, v in ours.items() if v is not None} == {
        k: float(v) for k, v in bounds.items()
    }


@pytest.mark.parametrize(("name", "schema"), OPERATIONS.items())
def test_the_required_fields_are_the_specs(name, schema):
    _, required = properties(name)

    assert set(schema.required) == required
