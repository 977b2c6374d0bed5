"""The web page at `/` in a real headless browser (Debian's chromium driven by selenium + chromedriver):
type a prompt, press Generate, watch the text stream in; it ends equal to the API's greedy text."""
import time

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serve_utils import Server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("preset:tiny", log_path=str(tmp_path_factory.mktemp("page") / "server.log"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_page_streams_the_generated_text(server, browser):
    prompt, max_tokens = "北京是中国的", 24
    expected = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).json()["choices"][0]["text"]
    assert expected
    browser.get(server.url + "/")
    assert "PanGu" in browser.title
    box = browser.find_element(By.ID, "prompt")
    box.send_keys(prompt)
    tokens = browser.find_element(By.ID, "max_tokens")
    tokens.clear()
    tokens.send_keys(str(max_tokens))
    browser.find_element(By.ID, "send").click()
    seen = set()  # the generated text as sampled while streaming: it grows through several values
    deadline = time.time() + 60
    while time.time() < deadline and browser.find_element(By.ID, "status").get_attribute("data-state") == "streaming":
        seen.add(browser.execute_script("const g = document.getElementById('generated'); return g ? g.textContent : ''"))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done"
    output = browser.find_element(By.ID, "output")
    assert browser.find_element(By.ID, "generated").text == expected
    assert output.text == prompt + expected
    assert int(output.get_attribute("data-chunks")) > 1  # many SSE events, each appended as it came
    assert all(expected.startswith(s) for s in seen)  # every intermediate view was a prefix of the final text
