"""What a model can do, and what a key may call: shared by keys and models_registry."""

from django.db import models


class Capability(models.TextChoices):
    TEXT = "TEXT", "Text (chat, completions)"
    EMBEDDING = "EMBEDDING", "Embeddings"
    IMAGE = "IMAGE", "Image generation"
    AUDIO_STT = "AUDIO_STT", "Speech to text"
    AUDIO_TTS = "AUDIO_TTS", "Text to speech"
