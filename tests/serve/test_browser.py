"""The web chat page in a real headless Chromium (Debian's, driven by Playwright): it lists the
models, sends a prompt, and the reply streams in piece by piece; Stop ends a stream.

Needs the `chromium` system package (.ci/run installs it). Outside CI the test skips when no
Chromium is found; in CI (CI=true) a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest
from tests.serve.conftest import Server, make_app, slow_down

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("GPTLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        pytest.fail(f"CI needs Chromium for the browser test; {CHROMIUM} is missing")
    pytest.skip("no Chromium installed (apt install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def slow_server():
    """The tiny models (context 256), slowed to ~50 ms a token so the stream takes seconds."""
    app = make_app(seq_len=256, max_tokens=200)
    for worker in app.state.workers.values():
        slow_down(worker, 0.05)
    with Server(app) as server:
        yield server


@pytest.fixture(scope="module")
def page(slow_server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(slow_server.url + "/")
        yield page
        browser.close()
        assert not errors, errors


# Records the reply's text length at every change while the message is still streaming.
WATCH = """() => {
  window.seen = [];
  new MutationObserver(() => {
    const m = document.querySelector('.message.assistant.streaming .content');
    if (m) window.seen.push(m.textContent.length);
  }).observe(document.querySelector('#messages'),
             {subtree: true, childList: true, characterData: true});
}"""


def test_page_streams_a_reply(page):
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    # the default max tokens fits the model: 200, or half its context of 256
    page.wait_for_function("document.querySelector('#max-tokens').value == '128'")
    page.select_option("#model", "tiny-b")
    page.evaluate(WATCH)
    page.fill("#max-tokens", "30")
    page.fill("#prompt", "Hello there")
    page.click("#send")
    assert page.locator(".message.user .content").last.text_content() == "Hello there"
    page.wait_for_selector(".message.assistant .finish", timeout=30_000)
    assert "stopped" in page.locator(".message.assistant .finish").last.text_content()
    reply = page.locator(".message.assistant .content").last.text_content()
    # the text appeared piece by piece while streaming, not all at once at the end
    lengths = [n for n in page.evaluate("window.seen") if n > 0]
    assert len(set(lengths)) >= 5, lengths
    assert lengths == sorted(lengths) and lengths[-1] <= len(reply)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_stop_button_ends_the_stream(page):
    page.click("#reset")
    page.fill("#max-tokens", "200")  # 10 s of tokens: Stop comes long before the end
    page.fill("#prompt", "Tell me more")
    page.click("#send")
    page.wait_for_function(
        "document.querySelector('.message.assistant.streaming .content')?.textContent.length > 0"
    )
    page.click("#stop")
    page.wait_for_selector(".message.assistant .finish")
    assert "by user" in page.locator(".message.assistant .finish").last.text_content()
    assert page.is_enabled("#send")
