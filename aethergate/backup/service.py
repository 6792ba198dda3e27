"""Backup and restore as every entry point runs them: audited, read with the same limits.

The export_backup and import_backup commands, the management API
(backup/api.py) and the admin page (backup/admin.py) call these, so each
export and each import is one audit entry (who and from where come from the
current actor) and an upload is bounded and parsed as the command's file is.
"""

from collections.abc import Iterator
from typing import IO

from aethergate.backup.export import dumps, export_backup
from aethergate.backup.importer import ImportReport, import_backup
from aethergate.backup.schema import KINDS, BackupError, loads, max_bytes
from aethergate.lib import audit

KIND = "backup"
ORDER = ("endpoints", "models", "users", "api_keys")  # the order the importer applies them
CHUNK = 64 * 1024


def export_text(*, include_secrets: bool = False) -> tuple[dict, str]:
    """The export document and its JSON text; recorded as an "export" audit entry."""
    document = export_backup(include_secrets=include_secrets)
    audit.record(
        "export",
        kind=KIND,
        name=document["exported_at"],
        changes={
            "include_secrets": include_secrets,
            "counts": {kind: len(document[kind]) for kind in KINDS},
        },
    )
    return document, dumps(document)


def chunks(text: str) -> Iterator[bytes]:
    """`text` as UTF-8 in pieces, for a streamed response."""
    data = text.encode()
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def read_upload(stream: IO[bytes], size: int | None = None) -> str:
    """An uploaded backup's text: at most max_bytes() (BackupError beyond), UTF-8 (BOM allowed).

    `size`, when the caller knows it (Content-Length, an uploaded file's size),
    refuses a too-large upload before reading it.
    """
    limit = max_bytes()
    if size is not None and size > limit:
        raise BackupError(f"Too large: a backup is at most {limit} bytes here.")
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BackupError(f"Too large: a backup is at most {limit} bytes here.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BackupError("Not UTF-8 text.") from None


def report_data(report: ImportReport) -> dict:
    """The report as JSON-ready data (the API's answer and the audit entry's changes)."""
    return {
        "source": report.source,
        "dry_run": report.dry_run,
        "tallies": {
            kind: {
                "created": report.tallies[kind].created,
                "updated": report.tallies[kind].updated,
                "unchanged": report.tallies[kind].unchanged,
            }
            for kind in ORDER
        },
        "granted": list(report.granted),
        "warnings": list(report.warnings),
    }


def import_text(
    text: str, *, dry_run: bool = False, grant_privileges: bool = False
) -> ImportReport:
    """Parse (schema.loads: size and depth limits) and import `text`; audit the outcome.

    The import is recorded as "import", a dry run as "dry-run import", each with
    its report. A refused file raises BackupError and changes nothing, so it
    writes no entry either (the command may run before the database has tables).
    """
    report = import_backup(loads(text), dry_run=dry_run, grant_privileges=grant_privileges)
    audit.record(
        "dry-run import" if dry_run else "import",
        kind=KIND,
        name=report.source,
        changes={"grant_privileges": grant_privileges, "report": report_data(report)},
    )
    return report
