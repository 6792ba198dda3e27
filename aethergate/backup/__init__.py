"""Backup and restore: a JSON export, and an all-or-nothing import of it or of an earlier backup.

schema.py is the format (versions, the fields of each kind, the checks on a
file), export.py writes it, importer.py reads it into the database, upgrade.py
brings an older version of it to the current one, legacy.py translates the
earlier FastAPI version's backup, and privileges.py says what an import may
give a user. Callers (the export_backup and import_backup
commands, tests) use the names below.
"""

from aethergate.backup.export import dumps, export_backup, write_private_file
from aethergate.backup.importer import ImportReport, import_backup
from aethergate.backup.schema import KINDS, LABELS, BackupError, loads, max_bytes

__all__ = [
    "KINDS",
    "LABELS",
    "BackupError",
    "ImportReport",
    "dumps",
    "export_backup",
    "import_backup",
    "loads",
    "max_bytes",
    "write_private_file",
]
