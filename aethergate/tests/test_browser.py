"""End to end: the first run of AetherGate, driven through the admin in headless Chromium.

A fresh SQLite database is migrated, the first admin is created with `ensure_admin`,
static files are collected and the ASGI app is served by uvicorn, as `make run` does.
The test then walks the staff flow in a real browser: users, endpoints, models and
API keys are created, edited, rotated, deactivated and deleted, and each step is
checked on the page that a person would look at.

It skips when Chromium or Playwright is missing, unless AETHERGATE_REQUIRE_BROWSER=1
(CI sets it), in which case it fails instead.
"""

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aethergate import server
from aethergate.testing import NotYet, wait_for
from proxy.tests.upstream import Upstream

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the machine
    expect = sync_playwright = None
    PLAYWRIGHT_IMPORT_ERROR = str(exc)
else:
    PLAYWRIGHT_IMPORT_ERROR = ""

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_USERNAME = "admin"
TIMEOUT_MS = 15_000
# Django's delete button, with its typographic apostrophe.
CONFIRM_DELETE = "Yes, I\u2019m sure"
SERVER_START_SECONDS = 30

# Where screenshots of the pages are kept for the README, when
# AETHERGATE_SCREENSHOTS_TO_DOCS=1 asks for them (they stay in the test's temporary
# directory otherwise, so that a test run leaves the checkout as it was).
DOCS_SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
LAPTOP = {"width": 1366, "height": 768}

USERS = "/admin/accounts/user/"
ENDPOINTS = "/admin/endpoints/endpoint/"
MODELS = "/admin/models_registry/model/"
KEYS = "/admin/keys/apikey/"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright; skipped (or failed in CI) without it."""
    reason = ""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (apt-get install chromium)"
    elif sync_playwright is None:
        reason = f"playwright cannot be imported: {PLAYWRIGHT_IMPORT_ERROR}"
    if reason:
        if os.environ.get("AETHERGATE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"AETHERGATE_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Server:
    def __init__(self, url: str, password: str, log: Path, workdir: Path):
        self.url = url
        self.admin_password = password
        self.log = log
        self.workdir = workdir

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A first-run AetherGate: fresh database, first admin, collected static, uvicorn."""
    with serve(tmp_path_factory.mktemp("aethergate-e2e")) as server:
        yield server


@contextlib.contextmanager
def serve(workdir: Path, settings: dict[str, str] | None = None):
    """A first-run AetherGate in `workdir`, with `settings` (environment variables) on top."""
    log = workdir / "server.log"
    password = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aethergate.settings",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(48)[:50],
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "AETHERGATE_ADMIN_USERNAME": ADMIN_USERNAME,
        "AETHERGATE_ADMIN_PASSWORD": password,
        # Pin what a developer's .env could otherwise change under the test.
        "AETHERGATE_ADMIN_EMAIL": "",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": "",
        "AETHERGATE_HTTPS": "false",
        "AETHERGATE_ENCRYPTION_KEY": "",
        "REDIS_URL": "",
        "MASTER_API_KEY": "",
        "PYTHONUNBUFFERED": "1",
        **(settings or {}),
    }

    with log.open("ab") as out:
        for command in (
            ["migrate", "--noinput"],
            ["ensure_admin"],
            ["collectstatic", "--noinput", "-v0"],
        ):
            out.write(f"$ manage.py {' '.join(command)}\n".encode())
            out.flush()
            done = subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
            )
            if done.returncode:
                pytest.fail(f"manage.py {command[0]} failed:\n{log.read_text()}", pytrace=False)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    out = log.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "aethergate.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            server.HTTP,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )

    def answering():
        if proc.poll() is not None:
            pytest.fail(f"uvicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            login = f"{url}/admin/login/"  # plain http on loopback, built above
            with urllib.request.urlopen(login, timeout=2) as response:  # noqa: S310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        try:
            wait_for(answering, SERVER_START_SECONDS, interval=0.2)
        except NotYet:
            pytest.fail(
                f"uvicorn did not answer within {SERVER_START_SECONDS}s:\n{log.read_text()}"
            )
        yield Server(url, password, log, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


# --------------------------------------------------------------------------- helpers


def _success(page, text):
    expect(page.locator("ul.messagelist li.success")).to_contain_text(text)


def _row(page, name):
    """The changelist row whose first-column link is exactly `name`."""
    link = page.get_by_role("link", name=name, exact=True)
    return page.locator("#result_list tbody tr").filter(has=link)


def _is_active_box(page, name):
    return _row(page, name).locator("input[name$='-is_active']")


def _raw_html(page) -> str:
    """The server's HTML for the current URL, fetched again with the page's session."""
    response = page.request.get(page.url)
    assert response.ok, f"{page.url}: HTTP {response.status}"
    return response.text()


def _pick_autocomplete(page, field, text, *, prefix=""):
    """Choose `text` in a Django autocomplete (select2) widget, as a person would; `prefix`
    names an inline row ("deployments-0-") whose widget it is."""
    within = f"#{prefix[:-1]} " if prefix else ""
    page.locator(f"{within}.field-{field} .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill(text)
    page.locator(".select2-results__option", has_text=text).click()
    expect(page.locator(f"#select2-id_{prefix}{field}-container")).to_contain_text(text)


def _add_deployment(page, index, endpoint, upstream_name, *, weight=None, priority=None):
    """Fill the model page's deployment row `index`, adding the row if the page has none."""
    prefix = f"deployments-{index}-"
    if not page.locator(f"#deployments-{index}").count():
        page.locator("#deployments-group .add-row a").click()
    _pick_autocomplete(page, "endpoint", endpoint, prefix=prefix)
    page.locator(f"#id_{prefix}upstream_name").fill(upstream_name)
    if weight is not None:
        page.locator(f"#id_{prefix}weight").fill(str(weight))
    if priority is not None:
        page.locator(f"#id_{prefix}priority").fill(str(priority))


def _add_consumer(page, username, email, organization, balance):
    """Add a consumer with a balance and no password through the user form."""
    page.goto(USERS + "add/")
    page.locator("#id_username").fill(username)
    page.locator("#id_email").fill(email)
    page.locator("#id_organization").fill(organization)
    page.locator("#id_balance").fill(balance)
    page.locator("input[name=usable_password][value=false]").check()
    _save(page)
    _success(page, "was added successfully")


def _price_per_1m_tokens(page, name, saved):
    """On a model's form: prices of 0.15 and 0.6 per 1M tokens, saved and listed as such."""
    page.locator("#id_price_in").fill("0.15")
    page.locator("#id_price_out").fill("0.6")
    _save(page)
    _success(page, saved)
    row = _row(page, name)
    expect(row.locator("td.field-input_price")).to_have_text("$0.15 / 1M tokens")
    expect(row.locator("td.field-output_price")).to_have_text("$0.60 / 1M tokens")


def _save(page):
    page.get_by_role("button", name="Save", exact=True).click()


def _open_change_page(page, changelist, name):
    page.goto(changelist)
    _row(page, name).get_by_role("link", name=name, exact=True).click()
    expect(page.locator("#content h1")).to_contain_text("Change")


def _run_action(page, changelist, names, action, message):
    page.goto(changelist)
    for name in names:
        _row(page, name).locator("input.action-select").check()
    page.locator("select[name=action]").select_option(action)
    page.get_by_role("button", name="Go").click()
    _success(page, message)


def _untick_and_save(page, changelist, name):
    page.goto(changelist)
    box = _is_active_box(page, name)
    expect(box).to_be_checked()
    box.uncheck()
    _save(page)
    _success(page, "was changed successfully")


def _assert_inactive(page, changelist, name):
    page.goto(changelist)
    expect(_is_active_box(page, name)).not_to_be_checked()


def _delete_through_page(page, changelist, name, notes):
    """Delete via the change page's Delete link and Django's confirmation page."""
    _open_change_page(page, changelist, name)
    page.get_by_role("link", name="Delete", exact=True).click()
    expect(page.locator("#content h1")).to_have_text(re.compile(rf"^Delete .*{re.escape(name)}"))
    for note in notes:
        expect(page.locator("#delete-notes")).to_contain_text(note)
    page.get_by_role("button", name=CONFIRM_DELETE).click()
    _success(page, "was deleted successfully")
    _assert_gone(page, changelist, name)


def _assert_gone(page, changelist, name):
    page.goto(changelist)
    expect(page.get_by_role("link", name=name, exact=True)).to_have_count(0)
    expect(page.locator("#changelist-form")).not_to_contain_text(name)


# --------------------------------------------------------------------------- the test


def _drive(browser, gateway, shots, walk, *, viewport=None, permissions=()):
    """Run `walk(page, gateway, shots)` in a new browser context; on failure, show why."""
    context = browser.new_context(
        base_url=gateway.url,
        viewport=viewport or {"width": 1280, "height": 900},
        accept_downloads=True,
    )
    if permissions:
        context.grant_permissions(list(permissions), origin=gateway.url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        walk(page, gateway, shots)
    except BaseException:
        failed = shots / "failure.png"
        try:
            page.screenshot(path=failed, full_page=True)
        except Exception as exc:  # best effort: the real error follows
            print(f"could not take a failure screenshot: {exc}")
        print(f"failed at {page.url}; screenshot {failed}")
        print(f"--- server log ({gateway.log}) ---\n{gateway.log_text()}")
        raise
    finally:
        context.close()
    print(f"screenshots in {shots}")


def _log_in(page, gateway):
    """Log in as the admin `ensure_admin` created."""
    page.goto("/admin/login/")
    page.locator("#id_username").fill(ADMIN_USERNAME)
    page.locator("#id_password").fill(gateway.admin_password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#content h1")).to_have_text("Gateway administration")
    expect(page.locator("#user-tools")).to_contain_text(ADMIN_USERNAME)


def test_first_run_staff_flow(browser, gateway, tmp_path_factory):
    _drive(browser, gateway, tmp_path_factory.mktemp("screenshots"), _walk)


def test_backup_and_restore_page(browser, gateway, tmp_path_factory):
    _drive(browser, gateway, tmp_path_factory.mktemp("backup-screenshots"), _walk_backup)


def _walk(page, gateway, shots):
    _log_in(page, gateway)

    # A consumer user, without a password (consumers only use API keys).
    _add_consumer(page, "e2e-consumer", "consumer@example.com", "E2E Org", "10")
    page.goto(USERS)
    row = _row(page, "e2e-consumer")
    expect(row.locator("td.field-organization")).to_have_text("E2E Org")
    expect(_is_active_box(page, "e2e-consumer")).to_be_checked()

    # An endpoint with a credential that must never be displayed again.
    credential = "sk-upstream-" + secrets.token_urlsafe(24)
    page.goto(ENDPOINTS + "add/")
    page.locator("#id_name").fill("e2e-upstream")
    page.locator("#id_base_url").fill("http://127.0.0.1:9/v1")
    page.locator("input[name='kind'][value='vllm']").check()
    page.locator("#id_new_api_key").fill(credential)
    _save(page)
    _success(page, "was added successfully")
    assert credential not in page.content()
    expect(_row(page, "e2e-upstream").locator("td.field-credential img")).to_have_attribute(
        "alt", "True"
    )
    expect(_row(page, "e2e-upstream").locator("td.field-kind")).to_have_text("vLLM")
    _open_change_page(page, ENDPOINTS, "e2e-upstream")
    expect(page.locator(".field-credential_status .readonly")).to_have_text("set")
    expect(page.locator("#id_new_api_key")).to_have_value("")
    page.screenshot(path=shots / "01-endpoint.png", full_page=True)
    assert credential not in page.content()
    assert credential not in _raw_html(page)

    # A model deployed on that endpoint, chosen through the autocomplete widget.
    page.goto(MODELS + "add/")
    page.locator("#id_name").fill("e2e-llama")
    _add_deployment(page, 0, "e2e-upstream", "llama3:8b")
    expect(page.locator("label[for=id_price_in]")).to_have_text("Input price (per 1M tokens):")
    _price_per_1m_tokens(page, "e2e-llama", "was added successfully")
    expect(_row(page, "e2e-llama").locator("td.field-served_by")).to_have_text(
        "e2e-upstream/llama3:8b"
    )

    # An API key for the user: its secret is shown once, then never again.
    page.goto(KEYS + "add/")
    page.locator("#id_name").fill("laptop-key")
    _pick_autocomplete(page, "owner", "e2e-consumer")
    page.locator("#id_rate_limit").fill("60/m")
    page.get_by_label("Text (chat, completions)").check()
    page.locator("#id_allowed_models_from").select_option(label="e2e-llama")
    page.locator("#id_allowed_models_add").click()
    expect(page.locator("#id_allowed_models_to option")).to_have_text(["e2e-llama"])
    _save(page)
    expect(page.locator("#content h1")).to_have_text("API key created")
    expect(page.locator("#secret-notice")).to_contain_text("It will not be shown again")
    secret = page.locator("code.api-key-secret").inner_text().strip()
    assert secret.startswith("ag-")
    assert len(secret) > 40
    prefix = secret[:11]
    page.screenshot(path=shots / "02-key-created.png", full_page=True)

    page.get_by_role("link", name="laptop-key", exact=True).click()
    expect(page.locator(".field-prefix .readonly")).to_have_text(prefix)
    expect(page.locator("#id_rate_limit")).to_have_value("60/m")
    expect(page.locator("#id_allowed_models_to option")).to_have_text(["e2e-llama"])
    assert secret not in page.content()
    assert secret not in _raw_html(page)
    page.goto(KEYS)
    row = _row(page, "laptop-key")
    expect(row.locator("td.field-display_prefix")).to_have_text(prefix + "…")
    expect(row.locator("td.field-owner")).to_have_text("e2e-consumer")
    assert secret not in page.content()
    assert secret not in _raw_html(page)

    # Rotate: a confirmation page, then a new secret; the old prefix is gone.
    _open_change_page(page, KEYS, "laptop-key")
    page.get_by_role("link", name="Rotate key").click()
    expect(page.locator("#content h1")).to_have_text("Rotate API key?")
    expect(page.locator("#content")).to_contain_text(prefix)
    page.screenshot(path=shots / "03-rotate-confirmation.png", full_page=True)
    page.get_by_role("button", name="Yes, rotate").click()
    expect(page.locator("#content h1")).to_have_text("API key rotated")
    expect(page.locator("#secret-notice")).to_contain_text("The previous secret no longer works")
    new_secret = page.locator("code.api-key-secret").inner_text().strip()
    assert new_secret.startswith("ag-")
    assert new_secret != secret
    new_prefix = new_secret[:11]
    page.screenshot(path=shots / "04-key-rotated.png", full_page=True)
    page.goto(KEYS)
    expect(_row(page, "laptop-key").locator("td.field-display_prefix")).to_have_text(
        new_prefix + "…"
    )
    html = _raw_html(page)
    assert new_secret not in html
    assert prefix not in html

    # Find the key from its whole secret: posted in a form, never put in an address.
    page.locator("a.findlink").click()
    page.locator("#id_secret").fill(new_secret)
    page.locator("#content form input[type=submit]").click()
    expect(page.locator("#id_name")).to_have_value("laptop-key")
    assert new_secret not in page.url
    page.screenshot(path=shots / "04b-found-by-secret.png", full_page=True)

    # Change the rate limit without rotating: the prefix stays.
    _open_change_page(page, KEYS, "laptop-key")
    page.locator("#id_rate_limit").fill("120/m,1000/d")
    _save(page)
    _success(page, "was changed successfully")
    row = _row(page, "laptop-key")
    expect(row.locator("td.field-display_prefix")).to_have_text(new_prefix + "…")
    _open_change_page(page, KEYS, "laptop-key")  # the limit is on the key's page, not the list
    expect(page.locator("#id_rate_limit")).to_have_value("120/m,1000/d")

    # An invalid spec is refused with a readable error, and nothing is saved.
    _open_change_page(page, KEYS, "laptop-key")
    page.locator("#id_rate_limit").fill("abc")
    _save(page)
    expect(page.locator("p.errornote")).to_be_visible()
    expect(page.locator(".field-rate_limit .errorlist")).to_contain_text("COUNT/UNIT")
    expect(page.locator(".field-rate_limit .errorlist")).to_contain_text("60/m")
    _open_change_page(page, KEYS, "laptop-key")
    expect(page.locator("#id_rate_limit")).to_have_value("120/m,1000/d")
    expect(page.locator(".field-prefix .readonly")).to_have_text(new_prefix)

    # A second key for the same user, to be deleted along with the user.
    page.goto(KEYS + "add/")
    page.locator("#id_name").fill("ci-key")
    _pick_autocomplete(page, "owner", "e2e-consumer")
    _save(page)
    expect(page.locator("#content h1")).to_have_text("API key created")
    ci_prefix = page.locator("code.api-key-secret").inner_text().strip()[:11]

    # Deactivate each kind: actions for the key and the endpoint, the
    # list_editable checkbox and Save for the user and the model.
    _run_action(page, KEYS, ["laptop-key"], "deactivate_selected", "deactivated")
    _assert_inactive(page, KEYS, "laptop-key")
    expect(_is_active_box(page, "ci-key")).to_be_checked()
    page.screenshot(path=shots / "05-keys-deactivated.png", full_page=True)
    _run_action(page, ENDPOINTS, ["e2e-upstream"], "deactivate_selected", "deactivated")
    _assert_inactive(page, ENDPOINTS, "e2e-upstream")
    _untick_and_save(page, USERS, "e2e-consumer")
    _assert_inactive(page, USERS, "e2e-consumer")
    expect(_is_active_box(page, ADMIN_USERNAME)).to_be_checked()
    _untick_and_save(page, MODELS, "e2e-llama")
    _assert_inactive(page, MODELS, "e2e-llama")

    # Delete each kind through Django's confirmation page, with our notes on it.
    _delete_through_page(page, KEYS, "laptop-key", ["request logs are kept"])
    expect(_row(page, "ci-key")).to_have_count(1)

    _delete_through_page(
        page,
        ENDPOINTS,
        "e2e-upstream",
        ["1 model loses a deployment", "no other deployment", "Request logs are kept"],
    )
    page.goto(MODELS)
    expect(_row(page, "e2e-llama").locator("td.field-served_by")).to_have_text("-")

    _delete_through_page(page, MODELS, "e2e-llama", ["Request logs are kept"])

    # Deleting the user takes its remaining key with it; the page says so.
    _open_change_page(page, USERS, "e2e-consumer")
    page.get_by_role("link", name="Delete", exact=True).click()
    notes = page.locator("#delete-notes")
    expect(notes).to_contain_text("Their API keys are deleted with them")
    expect(notes).to_contain_text("request logs are kept")
    expect(page.locator("#content")).to_contain_text(ci_prefix)
    page.screenshot(path=shots / "06-delete-user.png", full_page=True)
    page.get_by_role("button", name=CONFIRM_DELETE).click()
    _success(page, "was deleted successfully")
    _assert_gone(page, USERS, "e2e-consumer")
    expect(_row(page, ADMIN_USERNAME)).to_have_count(1)
    _assert_gone(page, KEYS, "ci-key")
    expect(page.locator("#changelist")).not_to_contain_text(ci_prefix)
    page.screenshot(path=shots / "07-end.png", full_page=True)

    # Nothing the staff typed as a secret ever reached the server log.
    log = gateway.log_text()
    for value in (credential, secret, new_secret):
        assert value not in log
    assert not re.search(r"Traceback|Internal Server Error", log)


def _walk_backup(page, gateway, shots):
    """Download a backup from the index's link, then upload an edited copy: dry run, confirm."""
    _log_in(page, gateway)
    expect(page.locator("#backup-module")).to_contain_text("Backup and restore")
    page.screenshot(path=shots / "b0-index-link.png", full_page=True)
    page.get_by_role("link", name="Backup and restore").click()
    expect(page.locator("#content h1")).to_have_text("Backup and restore")
    page.locator("#id_include_secrets").check()
    page.screenshot(path=shots / "b1-backup-page.png", full_page=True)
    with page.expect_download() as waiting:
        page.get_by_role("button", name="Download").click()
    download = waiting.value
    assert download.suggested_filename.endswith("-with-secrets.json")
    document = json.loads(Path(download.path()).read_text())
    assert document["format"] == "aethergate-backup"
    assert ADMIN_USERNAME in [user["username"] for user in document["users"]]

    # The same backup with one more endpoint: the dry run says so and saves nothing.
    document["endpoints"].append({"name": "restored-upstream", "base_url": "http://127.0.0.1:9/v1"})
    edited = shots / "edited-backup.json"
    edited.write_text(json.dumps(document))
    page.locator("#id_file").set_input_files(str(edited))
    page.get_by_role("button", name="Upload and dry-run").click()
    report = page.locator("#backup-report")
    expect(report).to_contain_text("Dry run of edited-backup.json")
    created = report.locator("tr.tally", has_text="Endpoints").locator("td").first
    expect(created).to_have_text("1")
    page.screenshot(path=shots / "b2-dry-run-report.png", full_page=True)
    page.goto(ENDPOINTS)
    expect(page.get_by_role("link", name="restored-upstream", exact=True)).to_have_count(0)

    # Upload again and confirm: the endpoint is there.
    page.goto("/admin/backup/")
    page.locator("#id_file").set_input_files(str(edited))
    page.get_by_role("button", name="Upload and dry-run").click()
    page.get_by_role("button", name="Confirm the import").click()
    expect(page.locator("#backup-report")).to_contain_text("Imported edited-backup.json")
    page.screenshot(path=shots / "b3-imported-report.png", full_page=True)
    page.goto(ENDPOINTS)
    expect(page.get_by_role("link", name="restored-upstream", exact=True)).to_have_count(1)
    assert not re.search(r"Traceback|Internal Server Error", gateway.log_text())


# --------------------------------------------------------------------------- a laptop's screen


def test_admin_on_a_laptop_screen(browser, gateway, tmp_path_factory):
    _drive(
        browser,
        gateway,
        tmp_path_factory.mktemp("laptop-screenshots"),
        _walk_laptop,
        viewport=LAPTOP,
        permissions=("clipboard-read", "clipboard-write"),
    )


def _shot(page, shots, name):
    """A screenshot of the whole page in `shots`, and in docs/screenshots/ if asked for."""
    page.screenshot(path=shots / name, full_page=True)
    if os.environ.get("AETHERGATE_SCREENSHOTS_TO_DOCS") == "1":
        page.screenshot(path=DOCS_SCREENSHOTS / name, full_page=True)


def _viewport_shot(page, shots, name):
    """What the screen shows now (not the whole page), like `_shot` otherwise."""
    page.screenshot(path=shots / name)
    if os.environ.get("AETHERGATE_SCREENSHOTS_TO_DOCS") == "1":
        page.screenshot(path=DOCS_SCREENSHOTS / name)


def _assert_list_fits(page, changelist):
    """The list's table is no wider than the room it has: no column hidden off-screen."""
    page.goto(changelist)
    widths = page.locator("#changelist .results").evaluate(
        "div => [div.scrollWidth, div.clientWidth, document.documentElement.scrollWidth]"
    )
    table, room, document = widths
    print(f"{changelist}: table {table} px in {room} px of room; page {document} px")
    assert table <= room, f"{changelist}: the table ({table} px) overflows its {room} px"
    assert document <= LAPTOP["width"], f"{changelist}: the page scrolls sideways"


def _walk_laptop(page, gateway, shots):
    """At 1366x768: import models from an upstream, prices per 1M tokens, balances for
    people, the secret notice's copy button, the icon, and lists that fit."""
    _log_in(page, gateway)
    captions = [
        c.strip() for c in page.locator("#content-main .module caption").all_text_contents()
    ]
    # The usage dashboard first, then the apps in setup order.
    assert captions[:6] == [
        "Usage",
        "Upstream endpoints",
        "Models",
        "Accounts",
        "API keys",
        "Request logs",
    ]
    expect(page.locator("#content-main")).not_to_contain_text("Groups")
    _shot(page, shots, "p1-index.png")

    # The icon: linked from every admin page, and /favicon.ico answered (no 404 logged).
    icon = page.locator("link[rel=icon]").get_attribute("href")
    drawn = page.request.get(icon)
    assert drawn.ok
    assert drawn.headers["content-type"].startswith("image/svg+xml")
    assert page.request.get("/favicon.ico").url.endswith(".svg")

    with Upstream() as upstream:
        credential = "sk-laptop-" + secrets.token_urlsafe(16)
        upstream.require_api_key = credential
        upstream.model_ids = [
            "meta-llama/Llama-3.1-8B-Instruct",
            "Qwen/Qwen2.5-Coder-32B-Instruct",
            "nomic-embed-text-v1.5",
        ]
        page.goto(ENDPOINTS + "add/")
        page.locator("#id_name").fill("gpu-box-vllm")
        page.locator("#id_base_url").fill(upstream.base_url)
        page.locator("input[name='kind'][value='vllm']").check()
        page.locator("#id_new_api_key").fill(credential)
        page.locator("#id_rpm_limit").fill("600")
        _save(page)
        _success(page, "was added successfully")

        # Test connection lists the upstream's models; Import adds the two picked.
        _open_change_page(page, ENDPOINTS, "gpu-box-vllm")
        page.get_by_role("link", name="Test connection").click()
        expect(page.locator("#connection-ok")).to_contain_text("lists 3 models")
        expect(page.locator("#upstream-models tbody tr")).to_have_count(3)
        assert credential not in page.content()
        page.get_by_label("meta-llama/Llama-3.1-8B-Instruct").check()
        page.get_by_label("Qwen/Qwen2.5-Coder-32B-Instruct").check()
        _shot(page, shots, "p2-test-connection.png")
        page.get_by_role("button", name="Import models").click()
        _success(page, "2 models imported")
        expect(page.locator("#result_list tbody tr")).to_have_count(2)
        assert [r.path for r in upstream.received] == ["/v1/models", "/v1/models"]

    # Prices entered per 1M tokens, shown for people in the list.
    _open_change_page(page, MODELS, "meta-llama/Llama-3.1-8B-Instruct")
    expect(page.locator("label[for=id_price_in]")).to_have_text("Input price (per 1M tokens):")
    page.locator("#id_price_in").fill("0.12345")
    _save(page)
    expect(page.locator(".field-price_in .errorlist")).to_contain_text(
        "at most 4 decimal places per 1M tokens"
    )
    _shot(page, shots, "p3-model-prices.png")
    # The labels follow the unit picked, before anything is saved.
    page.locator("#id_billing_unit").select_option("REQUEST")
    expect(page.locator("label[for=id_price_out]")).to_have_text("Output price (per request):")
    page.locator("#id_billing_unit").select_option("TOKEN")
    expect(page.locator("label[for=id_price_out]")).to_have_text("Output price (per 1M tokens):")
    _price_per_1m_tokens(page, "meta-llama/Llama-3.1-8B-Instruct", "was changed successfully")

    # A user with a balance, shown rounded in the list and exact in the form.
    _add_consumer(
        page,
        "laptop-consumer",
        "a.very.long.address.for.the.list@consumer-company.example.com",
        "Consumer Company International",
        "1234.5",
    )
    page.goto(USERS)
    expect(_row(page, "laptop-consumer").locator("td.field-shown_balance")).to_have_text(
        "$1,234.50"
    )
    _open_change_page(page, USERS, "laptop-consumer")
    expect(page.locator("#id_balance")).to_have_value("1234.5")

    # The new key's secret: a notice, and a Copy button that puts it on the clipboard.
    page.goto(KEYS + "add/")
    page.locator("#id_name").fill("laptop-key-with-a-long-name")
    _pick_autocomplete(page, "owner", "laptop-consumer")
    _save(page)
    notice = page.locator("ul.messagelist li.warning#secret-notice")
    expect(notice).to_contain_text("Copy this secret now")
    expect(page.locator(".errornote")).to_have_count(0)
    secret = page.locator("code.api-key-secret").inner_text().strip()
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("button.copy-secret")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    _shot(page, shots, "p4-key-created.png")

    for changelist, name in (
        (USERS, "p5-users.png"),
        (MODELS, "p6-models.png"),
        (ENDPOINTS, "p7-endpoints.png"),
        (KEYS, "p8-keys.png"),
    ):
        _assert_list_fits(page, changelist)
        _shot(page, shots, name)

    # A delete page says what it deletes.
    _open_change_page(page, KEYS, "laptop-key-with-a-long-name")
    page.get_by_role("link", name="Delete", exact=True).click()
    expect(page.locator("#content h1")).to_have_text(
        re.compile(r"^Delete API key laptop-key-with-a-long-name \(ag-")
    )
    _shot(page, shots, "p9-delete-key.png")

    log = gateway.log_text()
    assert credential not in log
    assert secret not in log
    assert not re.search(r'"GET /favicon.ico[^"]*" 404', log)
    assert not re.search(r"Traceback|Internal Server Error", log)
