"""The logs console in headless Chromium against the running stack: votes cast through ingest show up
newest first, Update and live refresh bring new ones, filters narrow the list, and the page works
without JavaScript. Screenshots of the console land in docs/screenshots/."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import requests

from conftest import REPO, wait_until
from console_fixtures import browser, console, recorder, start_api, start_ui, tls_front  # noqa: F401 (fixtures)

SCREENSHOTS = REPO / "docs" / "screenshots"
BANDS = [
    ("Alux Nahual", "Conquista"),
    ("Bohemia Suburbana", "Mil palabras"),
    ("Alux Nahual", "Alux Nahual"),
    ("Malacates Trebol Shop", "Vueltas"),
    ("Viernes Verde", "Hijos del Maíz"),
]


def cast_many(console, count: int, first: int = 0) -> list[str]:
    ids = []
    for n in range(first, first + count):
        band, album = BANDS[n % len(BANDS)]
        ids.append(console.cast(band, album, route="grpc" if n % 3 == 0 else "http", rank=f"{n % 10}.5"))
    return ids


def shown_ids(page) -> list[str]:
    return page.locator("#log li.vote").evaluate_all("items => items.map(i => i.dataset.voteId)")


def open_console(browser, url: str, javascript: bool = True, **context):
    page = browser.new_context(java_script_enabled=javascript, **context).new_page()
    page.goto(url)
    if javascript:
        # Hydrated: the browser build has loaded and attached its handlers.
        page.wait_for_load_state("networkidle")
    return page


def test_votes_cast_through_ingest_appear_newest_first(console, browser):
    ids = cast_many(console, 25)
    console.wait_logged(25)
    page = open_console(browser, console.url)
    assert page.title() == "Logs console · bandvote"
    assert shown_ids(page) == list(reversed(ids))[:20], "the latest 20, newest first"
    first = page.locator("#log li.vote").first.inner_text()
    assert re.match(r"^> \d{4}-\d{2}-\d{2} - \d{2}:\d{2}:\d{2} UTC - ", first), first
    band, album = BANDS[24 % len(BANDS)]
    assert f"{band} / {album}" in first
    assert page.locator("#total").inner_text() == "25 votes logged"
    assert page.locator("#routes").inner_text().count("grpc") == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-desktop.png"), full_page=True)
    phone = open_console(browser, console.url, viewport={"width": 390, "height": 844}, device_scale_factor=2)
    assert shown_ids(phone)[:3] == list(reversed(ids))[:3]
    phone.screenshot(path=str(SCREENSHOTS / "console-phone.png"), full_page=True)

    # Every form control has a label a screen reader reads out.
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, button')]
               .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                             && !el.textContent.trim())
               .map(el => el.outerHTML)"""
    )
    assert unlabeled == []


def test_update_and_live_refresh_show_new_votes(console, browser):
    cast_many(console, 3)
    console.wait_logged(3)
    page = open_console(browser, console.url)
    assert len(shown_ids(page)) == 3

    # Live off: a new vote waits for Update.
    page.locator("#live").uncheck()
    newer = console.cast("Viernes Verde", "Hijos del Maíz")
    console.wait_logged(4)
    page.wait_for_timeout(3000)
    assert newer not in shown_ids(page), "nothing refreshes while Live is off"
    url_before = page.url
    page.locator("#update").click()
    wait_until(lambda: shown_ids(page)[:1] == [newer], 10, "Update to show the new vote")
    assert page.url == url_before, "Update refreshes in place, without reloading"

    # Live on: new votes appear by themselves.
    page.locator("#live").check()
    newest = console.cast("Alux Nahual", "Conquista", route="grpc")
    console.wait_logged(5)
    wait_until(lambda: shown_ids(page)[:1] == [newest], 10, "live refresh to show the newest vote")
    wait_until(lambda: page.locator("#total").inner_text() == "5 votes logged", 10, "live refresh of the tallies")
    # The tallies say when they were computed: a recent instant, shown as its time of day in UTC.
    as_of = page.locator("#tallies-as-of time")
    stamp = as_of.get_attribute("datetime")
    computed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    age = datetime.datetime.now(datetime.timezone.utc) - computed
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(seconds=30), (stamp, age)
    assert as_of.inner_text() == f"{stamp[11:19]} UTC", as_of.inner_text()


def test_filters_narrow_the_list(console, browser):
    ids = cast_many(console, 15)
    console.wait_logged(15)
    page = open_console(browser, console.url)
    page.locator("#band").fill("Alux Nahual")
    page.locator("#route").select_option("http")
    page.locator("#apply").click()
    page.wait_for_url(re.compile(r"band=Alux"))
    expected = [
        vote_id
        for n, vote_id in reversed(list(enumerate(ids)))
        if BANDS[n % len(BANDS)][0] == "Alux Nahual" and n % 3 != 0
    ]
    wait_until(lambda: shown_ids(page) == expected, 10, "the filtered list")
    for line in page.locator("#log li.vote").all_inner_texts():
        assert "Alux Nahual /" in line and line.endswith("http"), line
    wanted = f"{len(expected)} votes logged"
    wait_until(lambda: page.locator("#total").inner_text() == wanted, 10, "the filtered tallies")

    # A filter nothing matches says so.
    page.goto(f"{console.url}/?band=Nobody")
    page.wait_for_load_state("networkidle")
    assert page.locator("#empty").inner_text() == "> no votes match these filters"
    assert shown_ids(page) == []


def test_works_without_javascript(console, browser):
    ids = cast_many(console, 27)
    console.wait_logged(27)
    page = open_console(browser, console.url, javascript=False)
    assert shown_ids(page) == list(reversed(ids))[:20]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-no-javascript.png"), full_page=True)

    # Update is a plain form: it reloads the page with the new vote.
    newer = console.cast("Bohemia Suburbana", "Mil palabras")
    console.wait_logged(28)
    page.locator("#update").click()
    page.wait_for_load_state("load")
    assert shown_ids(page)[0] == newer

    # The filter form is a GET form; older pages are links.
    page.locator("#band").fill("Bohemia Suburbana")
    page.locator("#apply").click()
    page.wait_for_load_state("load")
    assert "band=Bohemia+Suburbana" in page.url or "band=Bohemia%20Suburbana" in page.url
    lines = page.locator("#log li.vote").all_inner_texts()
    assert lines and all("Bohemia Suburbana /" in line for line in lines)
    page.goto(console.url)
    page.locator("#older").click()
    page.wait_for_load_state("load")
    assert shown_ids(page) == list(reversed(ids))[19:27], "the second page continues where the first ended"


def test_errors_and_empty_log_are_explained(console, browser, tmp_path):
    page = open_console(browser, console.url)
    assert page.locator("#empty").inner_text().startswith("> no votes logged yet")
    assert page.locator("#total").inner_text() == "0 votes logged"

    # A console whose logs API does not answer says so, on the page, with the reason.
    from conftest import _stop, free_port

    ui, url = start_ui(f"http://127.0.0.1:{free_port()}", tmp_path / "ui-no-api.log")
    try:
        broken = open_console(browser, url)
        alert = broken.locator("#log [role=alert]").inner_text()
        assert "does not answer" in alert, alert
        assert broken.locator("aside [role=alert]").count() == 1, "the tallies say it too"
    finally:
        _stop(ui)


def test_signs_api_requests_with_an_id_token_when_asked(recorder, tmp_path):
    from conftest import _stop

    address, seen = recorder
    ui, url = start_ui(
        f"http://{address}", tmp_path / "ui-token.log", LOGS_API_AUDIENCE="https://api.example", GCE_METADATA_HOST=address
    )
    try:
        for _ in range(2):
            assert requests.get(url, timeout=10).status_code == 200
        # Readiness asks the API too, signed like the pages' calls (a private API refuses others).
        assert requests.get(f"{url}/health/ready", timeout=10).status_code == 200
    finally:
        _stop(ui)
    token_requests = [(path, headers) for path, headers in seen if path.startswith("/computeMetadata/")]
    api_requests = [(path, headers) for path, headers in seen if not path.startswith("/computeMetadata/")]
    assert len(token_requests) == 1, "one token, reused"
    path, headers = token_requests[0]
    assert "audience=https%3A%2F%2Fapi.example" in path
    assert headers.get("metadata-flavor") == "Google"
    # Each page asks for the votes, the tallies and the certified result; readiness for /health/live.
    paths = sorted(path.split("?")[0] for path, _ in api_requests)
    assert paths == sorted(["/votes", "/tallies", "/result"] * 2 + ["/health/live"]), paths
    assert all(headers.get("authorization") == "Bearer token-for-test" for _, headers in api_requests)


def test_reaches_the_logs_api_over_https(pipeline, tls_front, tmp_path):
    """On Cloud Run the logs API is an https://….run.app address: the console must speak TLS and
    check the certificate against the roots it trusts (the system's, or SSL_CERT_FILE's)."""
    from conftest import _stop

    api, api_url = start_api(pipeline.database, tmp_path / "logs-api.log")
    front = tls_front(api_url)
    try:
        body = {"name": "Viernes Verde", "album": "Hijos del Maíz", "year": "1997", "rank": "9", "vote_id": "tls-1"}
        assert requests.post(f"{pipeline.http_url}/votes", json=body, timeout=10).status_code == 200
        wait_until(lambda: requests.get(f"{api_url}/tallies", timeout=5).json()["total"] == 1, 30, "the vote logged")

        ui, url = start_ui(front.url, tmp_path / "ui-tls.log", SSL_CERT_FILE=str(front.ca))
        try:
            page = requests.get(url, timeout=10)
            assert page.status_code == 200
            assert 'data-vote-id="tls-1"' in page.text and "Viernes Verde" in page.text, page.text[-2000:]
        finally:
            _stop(ui)
        assert any(path.startswith("/votes") for path in front.answered), front.answered

        # Without the test CA among its roots the console refuses the certificate and says the API
        # does not answer: the check is real.
        env_without_ca = {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
        ui, url = start_ui(front.url, tmp_path / "ui-untrusted.log", **env_without_ca)
        try:
            handshakes_before = len(front.refused_handshakes)
            page = requests.get(url, timeout=10)
            assert "does not answer" in page.text, page.text[-2000:]
            assert len(front.refused_handshakes) > handshakes_before, "the front saw the handshake fail"
        finally:
            _stop(ui)
    finally:
        _stop(api)
