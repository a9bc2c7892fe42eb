"""The operations page in a real headless Chromium (selenium + Debian's chromedriver):
log in with the token, see a source's status, open its page, download the history for
one table and open the workbook with openpyxl.

Selenium is synchronous and the servers run in the test's event loop, so each browser
script runs in a thread (``asyncio.to_thread``) while the loop keeps serving."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from openpyxl import load_workbook

from tests.conftest import RunningIngest
from tests.eventually import eventually
from tests.ops.conftest import OPS_TOKEN, RunningOps, envelope, send_webhook, wait_for_history

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Chromium or chromedriver is not installed "
        "(apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(tmp_path), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    driver.download_dir = tmp_path  # type: ignore[attr-defined]
    # A click that navigates returns before the next page has loaded; lookups wait for
    # their element (the index lists every source of the shared test database: slow).
    driver.implicitly_wait(30)
    try:
        yield driver
    finally:
        driver.quit()


def _downloaded(files: list[Path], suffix: str) -> Path | None:
    """The finished ``suffix`` download among ``files`` (none while Chromium still writes
    a ``.crdownload``)."""
    done = [path for path in files if path.suffix == suffix and path.stat().st_size > 0]
    in_progress = [path for path in files if path.suffix == ".crdownload"]
    return done[0] if done and not in_progress else None


def _session_and_source_page(driver, url: str, source_id: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Everything the page shows that the test checks, read in the browser's thread."""
    from selenium.webdriver.common.by import By

    seen: dict[str, object] = {}
    driver.get(f"{url}/")
    seen["login_url"] = driver.current_url
    driver.find_element(By.ID, "token").send_keys("wrong-token-000000000000")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    seen["wrong_token_error"] = driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
    driver.find_element(By.ID, "token").send_keys(OPS_TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    row = driver.find_element(By.CSS_SELECTOR, f"tr[data-source='{source_id}']")
    seen["index_url"] = driver.current_url  # read once the index has loaded
    seen["index_status"] = row.find_element(By.CLASS_NAME, "status").text
    seen["cookie"] = driver.get_cookie("ponte_ops_session")
    row.find_element(By.TAG_NAME, "a").click()
    seen["integration_type"] = driver.find_element(By.ID, "integration-type").text
    seen["source_url"] = driver.current_url
    seen["active"] = driver.find_element(By.ID, "active").text
    seen["status"] = driver.find_element(By.ID, "status").text
    seen["last_success"] = driver.find_element(By.ID, "last-success").text
    seen["runs"] = len(driver.find_elements(By.CSS_SELECTOR, "#runs tbody tr"))
    seen["onboarding_pedido"] = driver.find_element(
        By.CSS_SELECTOR, "#onboarding tr[data-table='Pedido']"
    ).text
    # "Histórico": only Pedido, as Excel, over the default period (the last 24 hours).
    driver.find_element(By.CSS_SELECTOR, "input[name=tables][value='Pedido']").click()
    driver.find_element(By.ID, "download").click()
    return seen


def _period_over_the_limit(driver) -> bool:  # type: ignore[no-untyped-def]
    """Over the limit, the page says so and downloads nothing: whether it said so."""
    from selenium.webdriver.common.by import By

    driver.execute_script(
        "document.getElementById('since').value = '2024-11-01T00:00';"
        "document.getElementById('until').value = '2024-11-09T00:00';"
    )
    driver.find_element(By.ID, "download").click()
    shown: bool = driver.find_element(By.ID, "period-error").is_displayed()
    return shown


async def test_the_page_shows_status_and_downloads_the_history(
    ops: RunningOps,
    ingest: RunningIngest,
    pool: asyncpg.Pool,
    source_id: str,
    browser: object,
) -> None:
    for table in ("Pedido", "Pedido", "Empresa"):
        assert (await send_webhook(ingest, source_id, envelope(table, rows=2))).status_code == 202
    await wait_for_history(pool, source_id, 3)

    seen = await asyncio.to_thread(_session_and_source_page, browser, ops.url, source_id)
    downloads: Path = browser.download_dir  # type: ignore[attr-defined]
    files = await eventually(
        lambda: sorted(downloads.iterdir()),
        satisfied=lambda files: _downloaded(files, ".xlsx"),
        timeout_s=20,
        interval_s=0.1,
        message=f"the .xlsx downloaded into {downloads}",
    )
    seen["workbook"] = _downloaded(files, ".xlsx")
    # Only once the first download is in: the one-workbook check below must not race it.
    seen["period_error_shown"] = await asyncio.to_thread(_period_over_the_limit, browser)

    assert str(seen["login_url"]).endswith("/login")  # no session: the page asks for the token
    assert seen["wrong_token_error"] == "Token inválido."
    assert str(seen["index_url"]).rstrip("/") == ops.url
    assert seen["index_status"] == "ok"
    cookie = seen["cookie"]
    assert isinstance(cookie, dict)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    # Not Secure over plain HTTP unless PONTE_OPS_COOKIE_SECURE says so (production sets
    # it behind its TLS ingress): every page after the login needed the cookie.
    assert cookie["secure"] is False
    assert OPS_TOKEN not in cookie["value"]
    assert str(seen["source_url"]).endswith(f"/sources/{source_id}")
    assert seen["integration_type"] == "erp" and seen["active"] == "Sim"
    assert seen["status"] == "ok"
    # In PONTE_OPS_TIMEZONE (São Paulo by default), with the offset shown.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d -03:00", str(seen["last_success"]))
    assert seen["runs"] == 3
    assert str(seen["onboarding_pedido"]).split() == ["Pedido", "2", "4", "0", "0", "0", "0"]
    assert seen["period_error_shown"] is True

    workbook = Path(str(seen["workbook"]))
    assert len(list(workbook.parent.glob("*.xlsx"))) == 1  # the 8-day request was not sent
    sheet = load_workbook(io.BytesIO(workbook.read_bytes()), read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    header, data = rows[0], rows[1:]
    assert len(data) == 2
    assert {row[header.index("tables")] for row in data} == {"Pedido"}
    assert {row[header.index("status_code")] for row in data} == {202}


async def test_the_page_and_its_cookie_cannot_change_anything(
    ops: RunningOps, ingest: RunningIngest, source_id: str
) -> None:
    """A session cookie reads; a PATCH with only the cookie is refused. The cookie is
    Secure, which httpx's cookie jar keeps to HTTPS, so it is sent as a header here."""
    async with httpx.AsyncClient(base_url=ops.url, follow_redirects=False) as client:
        assert (await client.get("/")).headers["location"] == "/login"
        login = await client.post("/login", data={"token": OPS_TOKEN})
        assert login.status_code == 303 and "ponte_ops_session" in login.cookies
        session = {"Cookie": f"ponte_ops_session={login.cookies['ponte_ops_session']}"}
        assert (await client.get(f"/ops/sources/{source_id}", headers=session)).status_code == 200
        refused = await client.patch(
            f"/ops/sources/{source_id}", json={"active": False}, headers=session
        )
        assert refused.status_code == 401
    # A cookie the server did not sign (far-future expiry, made-up signature) is nothing.
    forged = httpx.Cookies({"ponte_ops_session": "99999999999.deadbeef"})
    async with httpx.AsyncClient(base_url=ops.url, cookies=forged) as stranger:
        assert (await stranger.get(f"/ops/sources/{source_id}")).status_code == 401
        assert (await stranger.get("/", follow_redirects=False)).status_code == 303
