"""Stop all of a user's API keys from working (reversible with activate_user)."""

from accounts import services
from aethergate.lib.commands import SetActiveCommand


class Command(SetActiveCommand):
    help = "Stop all of a user's API keys from working (reversible with activate_user)."
    argument = "username"
    find = staticmethod(services.find_user)
    active = False
