"""Stop an API key from authenticating (reversible with activate_key)."""

from aethergate.lib.commands import SetActiveCommand
from keys.management.base import KeyCommand


class Command(KeyCommand, SetActiveCommand):
    help = "Stop an API key from authenticating (reversible with activate_key)."
    active = False
