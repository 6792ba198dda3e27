"""Let a deactivated user's API keys work again."""

from accounts import services
from aethergate.lib.commands import SetActiveCommand


class Command(SetActiveCommand):
    help = "Let a deactivated user's API keys work again."
    argument = "username"
    find = staticmethod(services.find_user)
    active = True
