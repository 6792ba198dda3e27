"""Rollups for the request logs stored before rollups existed (reversed: emptied)."""

from django.db import migrations


def backfill(apps, schema_editor):
    # The writer's own summing (through rebuild_usage), so that old and new rows are
    # rolled up alike; it writes the rollup table as this migration left it.
    from logs.services import rebuild_usage

    rebuild_usage(log_model=apps.get_model("logs", "RequestLog"))


def empty(apps, schema_editor):
    for name in ("UsageRollup", "DailyUsageRollup"):
        apps.get_model("logs", name).objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("logs", "0005_add_usage_rollups"),
    ]

    operations = [migrations.RunPython(backfill, empty)]
