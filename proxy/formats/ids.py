"""Ids the gateway makes for the items of the agent APIs (`resp_…`, `msg_…`, `fc_…`, `toolu_…`)."""

import secrets


def new_id(prefix: str) -> str:
    """`prefix` and 24 random hex digits: unique, and opaque as the APIs' own ids are."""
    return prefix + secrets.token_hex(12)
