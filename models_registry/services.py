"""Multi-row writes on the model catalog: a model with its deployments, and models
imported from an endpoint's own list.

The management API and the backup importer save a model and its deployment set
through `save_model` and `set_deployments`, so both apply the same rules.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction

from endpoints.models import Endpoint
from models_registry.models import Deployment, Model

# A deployment as the API and the backup give it: Deployment.shared_fields, the
# endpoint as an Endpoint; weight and priority may be left out (the defaults).
DeploymentRow = Mapping[str, object]

DUPLICATE = "Another deployment of this model has this endpoint and upstream name."


class DeploymentsInvalid(ValidationError):
    """A deployment set refused. `rows[i]` maps row i's fields to their messages ({}: fine;
    NON_FIELD_ERRORS: the row as a whole).

    As a ValidationError its messages are keyed "deployments[i]", each "field: message".
    """

    def __init__(self, rows: list[dict[str, list[str]]]):
        self.rows = rows
        super().__init__(
            {
                f"deployments[{index}]": [
                    message if name == NON_FIELD_ERRORS else f"{name}: {message}"
                    for name, messages in errors.items()
                    for message in messages
                ]
                for index, errors in enumerate(rows)
                if errors
            }
        )


def clean_deployments(model: Model, rows: Sequence[DeploymentRow]) -> list[Deployment]:
    """Unsaved Deployments of `model` for `rows`, each validated by the model's own rules.

    Refuses (DeploymentsInvalid) a row the Deployment's fields refuse (a blank
    upstream name, a negative weight) and a second row with the same endpoint
    and upstream name. `model` may be unsaved. Nothing is written.
    """
    deployments, errors, seen = [], [], set()
    for row in rows:
        deployment = Deployment(model=model, **row)
        try:
            # The set replaces what is stored, so uniqueness is judged within it, below.
            deployment.full_clean(
                exclude=["model"], validate_unique=False, validate_constraints=False
            )
            problems = {}
        except ValidationError as error:
            problems = error.message_dict
        pair = (deployment.endpoint_id, deployment.upstream_name)
        if not problems and pair in seen:
            problems = {NON_FIELD_ERRORS: [DUPLICATE]}
        seen.add(pair)
        deployments.append(deployment)
        errors.append(problems)
    if any(errors):
        raise DeploymentsInvalid(errors)
    return deployments


def set_deployments(model: Model, rows: Sequence[DeploymentRow]) -> bool:
    """Make the saved `model`'s deployments exactly `rows`; return whether anything was written.

    Validated as `clean_deployments` does. A stored deployment with the same
    endpoint and upstream name as a row is kept, its weight and priority
    updated if they differ: it keeps its id, and so the breaker state and
    session affinity the proxy holds for it. The others are deleted, the new
    rows created. Writing the same set again writes nothing. One transaction.
    """
    wanted = clean_deployments(model, rows)
    with transaction.atomic():
        stored = {
            (d.endpoint_id, d.upstream_name): d for d in Deployment.objects.filter(model=model)
        }
        pairs = {(d.endpoint_id, d.upstream_name) for d in wanted}
        gone = [d.pk for pair, d in stored.items() if pair not in pairs]
        if gone:
            # First, so that a kept pair never meets a deleted one in the unique index.
            Deployment.objects.filter(pk__in=gone).delete()
        written = bool(gone)
        for deployment in wanted:
            current = stored.get((deployment.endpoint_id, deployment.upstream_name))
            if current is None:
                deployment.model = model
                deployment.save()
                written = True
            elif (current.weight, current.priority) != (deployment.weight, deployment.priority):
                current.weight, current.priority = deployment.weight, deployment.priority
                current.save(update_fields=["weight", "priority", "updated_at"])
                written = True
    return written


def save_model(
    model: Model,
    *,
    update_fields: Iterable[str] | None = None,
    deployments: Sequence[DeploymentRow] | None = None,
) -> Model:
    """Save the validated `model` (only `update_fields` when given) and, unless
    `deployments` is None, replace its deployment set with them (`set_deployments`).

    One transaction: a refused deployment (DeploymentsInvalid) leaves neither
    the model's new values nor any deployment written.
    """
    with transaction.atomic():
        model.save(update_fields=update_fields)
        if deployments is not None:
            set_deployments(model, deployments)
    return model


@dataclass
class Imported:
    """What `import_models` did: models created, names already in the catalog (untouched),
    and names refused, each with the reason."""

    created: list[Model] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def import_models(*, endpoint: Endpoint, names: Iterable[str]) -> Imported:
    """Add each of `names` (upstream model ids) to the catalog, served by `endpoint`.

    A new model's public and upstream names are the id, its one deployment on
    `endpoint`; it is active, billed per token at price 0 until staff set its
    prices. A name already in the catalog (on any endpoint) is left as it is;
    one the model's own validation refuses (too long, …) is reported, not
    created. All or nothing.
    """
    wanted = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    result = Imported()
    with transaction.atomic():
        taken = set(Model.objects.filter(name__in=wanted).values_list("name", flat=True))
        for name in wanted:
            if name in taken:
                result.existing.append(name)
                continue
            model = Model(name=name)
            deployment = Deployment(model=model, endpoint=endpoint, upstream_name=name)
            try:
                model.full_clean(validate_unique=False)  # `taken` holds the catalog's names
                deployment.full_clean(exclude=["model"], validate_unique=False)
            except ValidationError as error:
                result.refused[name] = " ".join(error.messages)
                continue
            model.save()
            deployment.model = model
            deployment.save()
            result.created.append(model)
    return result
