"""The admin's "Backup and restore" page: download, upload, see the dry run, then confirm.

Who may do what is backup/api.py's rule (may_export; imports superusers
only). An upload is dry-run at once; to confirm it, its text is staged in a
file only the server's user can read, named by a random token kept in the
session, so the confirmation imports exactly the file that was dry-run
without sending the document (and any secrets in it) back through the page.
"""

import os
import secrets
import stat
import tempfile
import time
from pathlib import Path

from django import forms
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.views.decorators.http import require_http_methods

from aethergate.backup import service
from aethergate.backup.api import export_response, may_export
from aethergate.backup.export import write_private_file
from aethergate.backup.schema import LABELS, BackupError

STAGED = "aethergate_backup_staged"  # session key: {"token", "name", "grant_privileges"}
# An upload not confirmed within this long is deleted by the next upload.
STAGED_SECONDS = 3600


class UploadForm(forms.Form):
    file = forms.FileField(label="Backup file")
    grant_privileges = forms.BooleanField(
        required=False,
        label="Also import staff and superuser flags and password hashes",
    )


def staging_dir() -> Path:
    """Where uploads wait for their confirmation: a directory only this user may enter.

    Refused (BackupError) if it is a link or someone else's: whoever could write
    there could swap a staged file between its dry run and its confirmation.
    """
    path = Path(tempfile.gettempdir()) / "aethergate-backup-uploads"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise BackupError(f"{path} must be a directory only this server's user may enter.")
    return path


def sweep(now: float | None = None) -> None:
    """Delete staged uploads older than STAGED_SECONDS (abandoned dry runs)."""
    cutoff = (time.time() if now is None else now) - STAGED_SECONDS
    for staged in staging_dir().glob("*.json"):
        if staged.stat().st_mtime < cutoff:
            staged.unlink(missing_ok=True)


def _staged_path(token: str) -> Path:
    return staging_dir() / f"{token}.json"


def _discard(staged: dict | None) -> None:
    if staged:
        _staged_path(staged["token"]).unlink(missing_ok=True)


def _rows(report) -> list[tuple[str, object]]:
    return [(LABELS[kind], report.tallies[kind]) for kind in service.ORDER]


def may_open(user) -> bool:
    """Whether `user` may see the page (the index links it for them): export or import."""
    return user.is_superuser or may_export(user, include_secrets=False)


@require_http_methods(["GET", "POST"])
def backup_view(request, admin_site):
    """The page; `?download=1[&include_secrets=1]`: the export; a POST: a dry run or its confirm."""
    user = request.user
    if not may_open(user):
        raise PermissionDenied
    if request.method == "GET" and "download" in request.GET:
        include_secrets = request.GET.get("include_secrets") == "1"
        if not may_export(user, include_secrets=include_secrets):
            raise PermissionDenied
        return export_response(include_secrets=include_secrets)

    context = {
        **admin_site.each_context(request),
        "title": "Backup and restore",
        "may_export_secrets": user.is_superuser,
        "may_import": user.is_superuser,
        "form": UploadForm(),
    }
    if request.method == "POST":
        if not user.is_superuser:
            raise PermissionDenied
        step = _confirm if "confirm" in request.POST else _dry_run
        try:
            context.update(step(request))
        except BackupError as error:
            context["error"] = f"Nothing was imported. {error}"
    # No cache: the admin's views are never_cache (admin_site.admin_view).
    return TemplateResponse(request, "admin/aethergate/backup.html", context)


def _dry_run(request) -> dict:
    """Check and dry-run the uploaded file, then stage it for _confirm; raises BackupError."""
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return {"form": form}
    upload = form.cleaned_data["file"]
    grant = form.cleaned_data["grant_privileges"]
    token = secrets.token_urlsafe(24)
    text = service.read_upload(upload, upload.size)
    report = service.import_text(text, dry_run=True, grant_privileges=grant)
    _discard(request.session.get(STAGED))
    sweep()
    write_private_file(str(_staged_path(token)), text)
    request.session[STAGED] = {"token": token, "name": upload.name, "grant_privileges": grant}
    return {"report": report, "rows": _rows(report), "staged": request.session[STAGED]}


def _confirm(request) -> dict:
    """Import the staged file the session names, once; raises BackupError."""
    staged = request.session.pop(STAGED, None)
    if not staged or not secrets.compare_digest(staged["token"], request.POST["confirm"]):
        _discard(staged)
        return {"error": "That upload is no longer waiting: upload the file again."}
    path = _staged_path(staged["token"])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"error": "That upload is no longer waiting: upload the file again."}
    finally:
        path.unlink(missing_ok=True)
    report = service.import_text(text, grant_privileges=staged["grant_privileges"])
    return {"report": report, "rows": _rows(report), "imported": staged["name"]}
