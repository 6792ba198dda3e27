"""The base of the key commands that act on one key an operator names."""

from aethergate.lib.commands import ObjectCommand
from keys import services


class KeyCommand(ObjectCommand):
    """Takes a key by id, display prefix or whole secret (see `services.find_key`)."""

    argument = "key"
    argument_help = "The key's id or display prefix (see list_keys), or the whole key."

    def find(self, reference: str):
        return services.find_key(reference)

    def label(self, key) -> str:
        return f'API key {key.pk} ({key.prefix}…) "{key.name}" of {key.owner.username}'
