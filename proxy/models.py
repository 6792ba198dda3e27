"""The proxy's own state: stored Responses API responses (`store`, `previous_response_id`)."""

from django.conf import settings
from django.db import models


class ResponseStatus(models.TextChoices):
    """A Response's `status` (OAS `Response.status`)."""

    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    IN_PROGRESS = "in_progress", "In progress"
    CANCELLED = "cancelled", "Cancelled"
    QUEUED = "queued", "Queued"
    INCOMPLETE = "incomplete", "Incomplete"


class StoredResponse(models.Model):
    """One `/v1/responses` answer kept for `GET`, `DELETE`, `input_items` and
    `previous_response_id` (see proxy.stored), visible only to keys of its owner.

    `previous_id` is a plain string, not a foreign key: the response it continued may
    since have been deleted or pruned, and the chain then ends there (as at OpenAI).
    `input_items` are this request's own input items, each with an `id`; `response` is
    the whole Response object as returned, its `output` among it. `log_content` is the
    key's setting when the response was made: the admin shows content only if it was on.
    """

    id = models.CharField(primary_key=True, max_length=64, help_text='"resp_" and hex.')
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stored_responses"
    )
    api_key = models.ForeignKey(
        "keys.APIKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="stored_responses",
        verbose_name="API key",
    )
    model = models.CharField(max_length=100, help_text="Public model name.")
    previous_id = models.CharField(
        "previous response id",
        max_length=64,
        blank=True,
        help_text="The previous_response_id this response continued, if any.",
    )
    created_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=20, choices=ResponseStatus.choices)
    input_items = models.JSONField(default=list)
    response = models.JSONField(default=dict)
    log_content = models.BooleanField(
        default=False, help_text="The key's log_content when the response was stored."
    )

    class Meta:
        verbose_name = "stored response"
        indexes = [models.Index(fields=["owner", "created_at"], name="proxy_stored_owner_created")]

    def __str__(self):
        return self.id
