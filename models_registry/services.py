"""Multi-row writes on the model catalog: models imported from an endpoint's own list."""

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction

from endpoints.models import Endpoint
from models_registry.models import Deployment, Model


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
    `endpoint`; it is active, billed
    per token at price 0 until staff set its prices. A name already in the
    catalog (on any endpoint) is left as it is; one the model's own
    validation refuses (too long, …) is reported, not created. All or nothing.
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
