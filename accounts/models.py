"""Users: API consumers and staff, with an optional prepaid balance."""

from django.contrib.auth.models import AbstractUser
from django.db import models

MONEY = {"max_digits": 20, "decimal_places": 10}


class User(AbstractUser):
    """A consumer (owns API keys) or a staff member (`is_staff`), or both.

    `balance` is None when the user is not on prepaid billing: requests are
    not refused for money, but their cost is still recorded.
    """

    organization = models.CharField(max_length=200, blank=True)
    balance = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Prepaid credit. Empty: no prepaid enforcement (cost is still tracked).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        ordering = ["username"]
