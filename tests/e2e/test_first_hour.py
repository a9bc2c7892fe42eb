"""A newcomer's first hour, as a script: `ponte dev` (what `make dev` runs) as its own
process, then the README's commands exactly as the README writes them, the ops API and
page, the history export, a replay dry run, and Ctrl-C.

The commands come from the README itself (the block after "finds the stack there"), so
the README cannot promise a command that does not work.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ponte import dev_env
from ponte.shared.embedded import free_port
from tests.eventually import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
PONTE = f"{sys.executable} -m ponte.cli"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def readme_commands() -> list[str]:
    """The ``.venv/bin/ponte`` lines of the README's first-hour block, comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"finds the stack there:\n\n```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README lost its first-hour command block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith(".venv/bin/ponte")]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command.replace(".venv/bin/ponte", PONTE),
        shell=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def first_failure(log: Path) -> str:
    """Where the log first says something went wrong, and what follows (a failure in one
    of the three servers cancels the others: the last lines are only the echo)."""
    text = log.read_text(errors="replace")
    starts = [i for i in (text.find("ERROR"), text.find("Traceback")) if i >= 0]
    start = max(0, min(starts) - 500) if starts else 0
    return text[start : start + 4000]


async def wait_for(
    path: Path, process: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    """Wait for ``ponte dev`` to write ``path``; fail at once, with its log, if it exits."""

    def written() -> bool:
        assert process.poll() is None, first_failure(log)
        return path.exists()

    await eventually(
        written, timeout_s=timeout_s, interval_s=0.2, message=f"ponte dev to come up (log: {log})"
    )


def sign_in_and_list_sources(ops_url: str, token: str) -> list[str]:
    """In headless Chromium: the login form with the token, then the sources on the index."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(20)
    try:
        driver.get(f"{ops_url}/")
        assert driver.current_url.endswith("/login")
        driver.find_element(By.NAME, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
        driver.find_element(By.CSS_SELECTOR, "table tbody tr")
        links = driver.find_elements(By.CSS_SELECTOR, "table tbody a")
        return [str(link.get_attribute("href")).rsplit("/", 1)[-1] for link in links]
    finally:
        driver.quit()


async def test_a_newcomers_path_through_make_devs_stack(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    env = {**os.environ, "PONTE_LOG_LEVEL": "WARNING"}
    env.pop("PONTE_OPS_TOKEN", None)
    with log.open("wb") as output:
        dev = subprocess.Popen(
            [sys.executable, "-m", "ponte.cli", "dev", "--port", str(free_port())],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await wait_for(tmp_path / dev_env.DEV_ENV, dev, log, timeout_s=120)
        stack = dev_env.read(tmp_path / dev_env.DEV_ENV)
        token, ops_url = stack["PONTE_OPS_TOKEN"], stack["PONTE_DEV_OPS_URL"]

        commands = readme_commands()
        assert any("sign shopify-demo" in c for c in commands)
        erp_sent = 0
        for command in commands:
            if "| sh" in command and shutil.which("curl") is None:
                continue  # the printed curl needs curl; --send covered the same request
            erp_sent += "sign erp-demo" in command
            result = await asyncio.to_thread(run, command, tmp_path)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            if "--send" in command:
                assert result.stdout.startswith("202 "), (command, result.stdout)
                assert '"duplicate":false' in result.stdout.replace(" ", ""), result.stdout
        woo = await asyncio.to_thread(run, ".venv/bin/ponte sign woo-demo --send", tmp_path)
        assert woo.stdout.startswith("202 "), woo.stdout + woo.stderr

        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=ops_url, headers=headers, timeout=20) as ops:
            listed = (await ops.get("/ops/sources")).json()
            ids = {item["id"] for item in listed["items"]}
            assert {"erp-demo", "shopify-demo", "woo-demo"} <= ids, listed

            async def recent_runs() -> list[dict[str, Any]]:
                erp = (await ops.get("/ops/sources/erp-demo")).json()
                runs: list[dict[str, Any]] = erp["recent_runs"]
                return runs

            await eventually(  # the history is written in lingering groups
                recent_runs,
                satisfied=lambda runs: (
                    len([r for r in runs if r["status_code"] == 202]) >= erp_sent
                ),
                timeout_s=30,
                interval_s=0.2,
                message=f"{erp_sent} accepted requests in erp-demo's recent runs",
            )
            export = await ops.get(
                "/ops/history/export", params={"source_id": "erp-demo", "format": "csv"}
            )
            assert export.status_code == 200 and export.text.count("\n") >= 3, export.text[:500]
        if CHROMIUM and CHROMEDRIVER:
            shown = await asyncio.to_thread(sign_in_and_list_sources, ops_url, token)
            assert {"erp-demo", "shopify-demo", "woo-demo"} <= set(shown), shown

        replay = await asyncio.to_thread(run, ".venv/bin/ponte replay --dry-run", tmp_path)
        assert replay.returncode == 0 and "would replay 0 dead letter(s)" in replay.stderr, replay
    finally:
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dev.kill()
            raise
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert not (tmp_path / dev_env.DEV_ENV).exists()  # a stopped stack leaves no address
    assert "stopped: services, broker and database are down" in log.read_text()
