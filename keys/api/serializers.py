"""Management API serializers for consumer keys; secrets appear only in IssuedKeySerializer."""

from rest_framework import serializers

from accounts.models import User
from aethergate.lib.api import CleanModelSerializer
from aethergate.lib.capabilities import Capability
from keys import services
from keys.models import STATES, APIKey


class KeySerializer(CleanModelSerializer):
    """A consumer key, without its secret (only its display `prefix`). Editing never rotates."""

    owner = serializers.PrimaryKeyRelatedField(
        queryset=User.objects.all(), help_text="User id; set on create, cannot change."
    )
    owner_username = serializers.CharField(source="owner.username", read_only=True)
    state = serializers.ChoiceField(
        choices=list(STATES.values()),
        read_only=True,
        help_text="Whether the key authenticates now: usable, or why it is refused.",
    )
    allowed_capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=Capability.choices),
        required=False,
        help_text="What this key may call. Empty: every capability.",
    )
    allowed_models = serializers.SlugRelatedField(
        many=True,
        slug_field="name",
        queryset=APIKey.model_choices(),
        required=False,
        help_text="Public model names this key may use. Empty: every model.",
    )

    # Filled in by keys.services when a secret is issued.
    clean_exclude = ("digest", "prefix")

    class Meta:
        model = APIKey
        fields = (
            "id",
            *APIKey.shared_fields,
            "owner_username",
            "state",
            "last_used_at",
            "updated_at",
        )
        read_only_fields = ("prefix", "created_at", "rotated_at", "last_used_at", "updated_at")

    def validate_owner(self, owner):
        if self.instance is not None and owner.pk != self.instance.owner_id:
            raise serializers.ValidationError(
                "A key's owner cannot be changed; issue a new key to the other user."
            )
        return owner

    def create(self, validated_data):
        key, secret = services.create_key(**validated_data)
        key.issued_secret = secret
        return key


class IssuedKeySerializer(KeySerializer):
    """A key with its secret: the one response that carries it (create and rotate)."""

    secret = serializers.CharField(
        source="issued_secret",
        read_only=True,
        help_text="The key in clear. Shown only in this response; AetherGate keeps a digest.",
    )

    class Meta(KeySerializer.Meta):
        fields = (*KeySerializer.Meta.fields, "secret")
