"""What management commands share: error text, tables, commands about one named object, audit."""

import functools

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.management.base import BaseCommand, CommandError

from aethergate.lib import audit
from aethergate.lib.activation import set_active


def install_command_actor() -> None:
    """Make every management command act, for the audit log, as itself run by the OS user.

    Wrapping BaseCommand.execute (once, from the project app's ready()) rather
    than giving AetherGate's commands a base class reaches Django's own too:
    createsuperuser, changepassword and shell change users as well, and
    manage.py and call_command() both go through execute().
    """
    execute = BaseCommand.execute
    if getattr(execute, "audited", False):
        return

    @functools.wraps(execute)
    def audited_execute(self, *args, **options):
        name = type(self).__module__.rpartition(".")[2]
        with audit.acting(audit.command_actor(name)):
            return execute(self, *args, **options)

    audited_execute.audited = True
    BaseCommand.execute = audited_execute


def describe(error: ValidationError) -> str:
    """A ValidationError as "field: message; field: message"."""
    if not hasattr(error, "error_dict"):
        return " ".join(error.messages)
    return "; ".join(
        " ".join(messages) if field == NON_FIELD_ERRORS else f"{field}: {' '.join(messages)}"
        for field, messages in error.message_dict.items()
    )


def table(headers, rows) -> str:
    """Rows as left-aligned columns under a header line."""
    widths = [max(len(str(v)) for v in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


def found(find, reference: str):
    """`find(reference)`, with a LookupError's message raised as a CommandError."""
    try:
        return find(reference)
    except LookupError as error:
        raise CommandError(str(error)) from None


class ObjectCommand(BaseCommand):
    """A command about the one object its positional argument names.

    Subclasses set `argument` (and `argument_help`), override `find` (a lookup
    that raises LookupError with the message to show) and `handle_object`.
    """

    argument: str
    argument_help: str | None = None

    def add_arguments(self, parser):
        parser.add_argument(self.argument, help=self.argument_help)

    def find(self, reference: str):
        raise NotImplementedError

    def handle_object(self, obj) -> None:
        raise NotImplementedError

    def handle(self, *args, **options):
        self.handle_object(found(self.find, options[self.argument]))


class SetActiveCommand(ObjectCommand):
    """Activates the named object, or deactivates it when `active` is False.

    Subclasses may override `label`, how the object is named in the output.
    """

    active: bool

    def label(self, obj) -> str:
        return str(obj)

    def handle_object(self, obj) -> None:
        label = self.label(obj)
        if set_active(obj, active=self.active):
            verb = "Activated" if self.active else "Deactivated"
            self.stdout.write(self.style.SUCCESS(f"{verb} {label}."))
        else:
            state = "active" if self.active else "inactive"
            self.stdout.write(f"{label} is {state} already; nothing to do.")
