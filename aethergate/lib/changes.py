"""The signal that what `/v1` serves from (keys, users, models, endpoints) changed."""

from django.dispatch import Signal

# Sent after the commit of any change to a key, user, model or endpoint.
catalog_changed = Signal()
