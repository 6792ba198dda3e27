"""Rollups for the request logs stored before rollups existed (reversed: emptied).

The backfill runs the writer's current code, which writes columns added
after this migration: it now runs in 0007, once they exist, and here only
for databases that already ran it (nothing to do).
"""

from django.db import migrations


def backfill(apps, schema_editor):
    pass


def empty(apps, schema_editor):
    for name in ("UsageRollup", "DailyUsageRollup"):
        apps.get_model("logs", name).objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("logs", "0005_add_usage_rollups"),
    ]

    operations = [migrations.RunPython(backfill, empty)]
