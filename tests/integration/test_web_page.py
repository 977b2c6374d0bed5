"""The web page at `/` in a real headless browser (chromium driven by selenium + chromedriver, found on PATH):
type a prompt, press Generate, watch the text stream in; it ends equal to the API's greedy text.
Waits are event-driven (the page's status changes); their long timeouts are hang guards only."""
import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serve_utils import Server

KEY = "page-test-key"
HANG_GUARD_S = 600  # only reached when something hangs; a normal stream ends in seconds


def _which(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(f"none of {names} is on PATH: install chromium and its chromedriver (see the README's "
                       f"test command)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("preset:tiny", "--api-key", KEY, log_path=str(tmp_path_factory.mktemp("page") / "server.log"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = _which("chromium", "chromium-browser", "google-chrome")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(_which("chromedriver")))
    driver.set_page_load_timeout(HANG_GUARD_S)
    yield driver
    driver.quit()


def test_page_streams_the_generated_text(server, browser):
    prompt, max_tokens = "北京是中国的", 24
    expected = httpx.post(server.url + "/v1/completions", timeout=HANG_GUARD_S, headers={"Authorization": f"Bearer {KEY}"}, json={
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).json()["choices"][0]["text"]
    assert expected
    browser.get(server.url + "/")
    assert "PanGu" in browser.title
    box = browser.find_element(By.ID, "prompt")
    box.send_keys(prompt)
    browser.find_element(By.ID, "api_key").send_keys(KEY)  # the server was started with --api-key
    tokens = browser.find_element(By.ID, "max_tokens")
    tokens.clear()
    tokens.send_keys(str(max_tokens))
    browser.find_element(By.ID, "send").click()
    seen = set()  # the generated text as sampled while streaming: it grows through several values

    def finished(d):
        seen.add(d.execute_script("const g = document.getElementById('generated'); return g ? g.textContent : ''"))
        return d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error", "stopped")

    WebDriverWait(browser, HANG_GUARD_S, poll_frequency=0.02).until(finished)
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done"
    output = browser.find_element(By.ID, "output")
    assert browser.find_element(By.ID, "generated").text == expected
    assert output.text == prompt + expected
    assert int(output.get_attribute("data-chunks")) > 1  # many SSE events, each appended as it came
    assert all(expected.startswith(s) for s in seen)  # every intermediate view was a prefix of the final text
