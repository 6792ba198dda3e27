"""Let a deactivated API key authenticate again."""

from aethergate.lib.commands import SetActiveCommand
from keys.management.base import KeyCommand


class Command(KeyCommand, SetActiveCommand):
    help = "Let a deactivated API key authenticate again."
    active = True
