"""The review pages (issue 30), as people use them: a real `lema serve review` on a store filled by a real
`lema collect`, driven by a real headless Chromium (Debian's `chromium` and `chromium-driver`, through Selenium),
then `lema export --min-grade good`. Screenshots of each view go to $LEMA_TEST_OUTPUT/review (or the test's tmp
folder)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from conftest import free_port, lema_command, requires_lema_tiny

from lema.devtools import wait_http

TOKEN = "review-test-token-7c1e"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = requires_lema_tiny


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store filled the way users fill it: `lema collect` with lema-tiny and the reference corrector."""
    path = tmp_path_factory.mktemp("review-store") / "lema.db"
    done = subprocess.run([*lema_command(), "collect", "--source", "synthetic:8", "--store", str(path), "--samples",
                           "2", "--temperature", "1.0", "--seed", "0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    accepted = sqlite3.connect(path).execute("select count(*) from corrections where status='accepted'").fetchone()[0]
    assert accepted >= 6, f"the collection made only {accepted} accepted corrections"
    return path


@pytest.fixture(scope="module")
def review_server(store, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("review-log") / "review.log"
    env = {**os.environ, "LEMA_REVIEW_TOKEN": TOKEN}
    process = subprocess.Popen([*lema_command(), "serve", "review", "--store", str(store), "--port", str(port)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _review_rows(store: Path) -> list[tuple]:
    return sqlite3.connect(store).execute("select correction_id, reviewer, grade, withdrawn_at from reviews").fetchall()


def test_no_token_no_pages_and_no_grades(review_server, store):
    page = httpx.get(review_server + "/")
    assert page.status_code == 401 and 'id="login-form"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    some_id = sqlite3.connect(store).execute("select id from corrections limit 1").fetchone()[0]
    before = _review_rows(store)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "lema_review=alice|9999999999|forged"}):
        refused = httpx.post(review_server + "/api/grades", json={"correction_id": some_id, "grade": "poor"},
                             headers={**headers, "X-Lema-Review": "1"})
        assert refused.status_code == 401 and set(refused.json()) == {"error"}, refused.text
        assert "wrong" not in refused.text  # never echoes what was sent
    wrong_login = httpx.post(review_server + "/login", data={"token": "nope", "reviewer": "mallory"})
    assert wrong_login.status_code == 401 and "lema_review" not in wrong_login.headers.get("set-cookie", "")
    assert _review_rows(store) == before

    # A session cookie alone cannot write: a cross-site form could send it, but not the header.
    login = httpx.post(review_server + "/login", data={"token": TOKEN, "reviewer": "carol"})
    assert login.status_code == 303
    cookie = login.cookies["lema_review"]
    assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
    no_header = httpx.post(review_server + "/api/grades", json={"correction_id": some_id, "grade": "poor"},
                           cookies={"lema_review": cookie})
    assert no_header.status_code == 401 and _review_rows(store) == before


def test_bad_grades_are_refused_by_name(review_server, store):
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Lema-Reviewer": "api-check"}
    some_id = sqlite3.connect(store).execute("select id from corrections limit 1").fetchone()[0]
    cases = [({"correction_id": some_id, "grade": "meh"}, 400, "grade"),
             ({"correction_id": some_id}, 422, "grade"),
             ({"correction_id": "no-such-correction", "grade": "good"}, 404, "correction_id"),
             ({"correction_id": some_id, "grade": "good", "note": "x" * 2001}, 422, "note"),
             ({"correction_id": some_id, "grade": "good", "extra": 1}, 422, "extra")]
    for body, status, field in cases:
        answer = httpx.post(review_server + "/api/grades", json=body, headers=headers)
        assert answer.status_code == status and field in answer.json()["error"]["message"], (body, answer.text)
    bad_name = httpx.post(review_server + "/api/grades", json={"correction_id": some_id, "grade": "good"},
                          headers={**headers, "X-Lema-Reviewer": "<script>"})
    assert bad_name.status_code == 400 and "reviewer" in bad_name.json()["error"]["message"]
    assert not [r for r in _review_rows(store) if r[1] == "api-check"]
    assert httpx.get(review_server + "/correction?id=nope", headers=headers).status_code == 404
    assert httpx.get(review_server + "/?status=bogus", headers=headers).status_code == 400


def test_the_server_refuses_to_start_unguarded(store, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LEMA_REVIEW_TOKEN"}
    no_token = subprocess.run([*lema_command(), "serve", "review", "--store", str(store), "--port", "0"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and "LEMA_REVIEW_TOKEN" in no_token.stderr
    wide = subprocess.run([*lema_command(), "serve", "review", "--store", str(store), "--host", "0.0.0.0"],
                          env={**env, "LEMA_REVIEW_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60)
    assert wide.returncode == 2 and "tls_cert" in wide.stderr


@pytest.fixture()
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium not installed (Debian: apt-get install chromium chromium-driver; make test-deps does it)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100",
                     "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _screens(tmp_path: Path) -> Path:
    folder = Path(os.environ["LEMA_TEST_OUTPUT"]) / "review" if os.environ.get("LEMA_TEST_OUTPUT") else \
        tmp_path / "screens"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _export(store: Path, out: Path, *extra: str) -> dict:
    done = subprocess.run([*lema_command(), "export", "--store", str(store), "--out", str(out), "--recipe", "tiny",
                           *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_grading_five_corrections_by_keyboard(review_server, store, browser, tmp_path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    screens = _screens(tmp_path)
    # pages change under the waits (a grade moves on to the next correction): a vanished element means "not yet"
    wait = WebDriverWait(browser, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    baseline = _export(store, tmp_path / "before")

    browser.get(review_server + "/")  # no session: the 401 page is the login form
    assert browser.find_element(By.ID, "login-form")
    browser.save_screenshot(str(screens / "login.png"))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "reviewer-name").send_keys("alice")
    browser.find_element(By.ID, "login-button").click()
    wait.until(lambda d: d.find_elements(By.ID, "queue"))
    total = int(browser.find_element(By.ID, "total").text)
    assert total >= 6
    browser.save_screenshot(str(screens / "queue.png"))

    browser.get(review_server + "/summary")
    zero = {g: int(browser.find_element(By.CSS_SELECTOR, f'#totals [data-grade="{g}"]').text)
            for g in ("excellent", "good", "poor")}

    browser.get(review_server + "/review?grade=ungraded&status=accepted")
    keys = "12323"  # excellent, good, poor, good, poor
    graded = []
    for index, key in enumerate(keys):
        wait.until(lambda d: d.find_elements(By.ID, "correction"))
        article = browser.find_element(By.ID, "correction")
        graded.append(article.get_attribute("data-id"))
        assert browser.find_elements(By.ID, "wrong-step") or article.get_attribute("data-id")
        if index == 0:
            browser.save_screenshot(str(screens / "correction.png"))
        if index == 3:  # a note first: n focuses it, Escape leaves it, then the grade key
            ActionChains(browser).send_keys("n").perform()
            ActionChains(browser).send_keys("the explanation is thin").perform()
            ActionChains(browser).send_keys("\ue00c").perform()  # Escape
        before = browser.current_url
        ActionChains(browser).send_keys(key).perform()
        wait.until(lambda d: d.current_url != before or "last one" in d.find_element(By.ID, "grade-status").text)
    assert len(set(graded)) == 5

    rows = {cid: (grade, withdrawn) for cid, reviewer, grade, withdrawn in _review_rows(store) if reviewer == "alice"}
    assert [rows[cid][0] for cid in graded] == ["excellent", "good", "poor", "good", "poor"]
    note = sqlite3.connect(store).execute("select note from reviews where correction_id=? and reviewer='alice'",
                                          (graded[3],)).fetchone()[0]
    assert note == "the explanation is thin"

    # Undo on the last one (u): its grade is withdrawn, then graded again (3) -- still five graded.
    browser.get(review_server + "/correction?" + urlencode({"id": graded[4]}))
    wait.until(lambda d: d.find_elements(By.ID, "correction"))
    ActionChains(browser).send_keys("u").perform()
    wait.until(lambda d: "Undone" in d.find_element(By.ID, "grade-status").text)
    withdrawn = [r for r in _review_rows(store) if r[0] == graded[4] and r[1] == "alice"]
    assert len(withdrawn) == 1 and withdrawn[0][3] is not None
    regraded_page = browser.current_url
    ActionChains(browser).send_keys("3").perform()
    wait.until(lambda d: any(r[0] == graded[4] and r[1] == "alice" and r[2] == "poor" and r[3] is None
                             for r in _review_rows(store)))
    # the page moves on to the next correction after a grade: let it, so it cannot replace the summary below
    wait.until(lambda d: d.current_url != regraded_page or "last one" in d.find_element(By.ID, "grade-status").text)

    browser.get(review_server + "/summary")
    wait.until(lambda d: d.find_elements(By.ID, "totals"))
    after = {g: int(browser.find_element(By.CSS_SELECTOR, f'#totals [data-grade="{g}"]').text)
             for g in ("excellent", "good", "poor")}
    assert after == {"excellent": zero["excellent"] + 1, "good": zero["good"] + 2, "poor": zero["poor"] + 2}
    browser.save_screenshot(str(screens / "summary.png"))

    # Grades decide training: --min-grade good leaves the two Poor ones out, and says so.
    filtered = _export(store, tmp_path / "after", "--min-grade", "good")
    assert filtered["review"]["left_out"] == {"graded_poor": 2}
    assert filtered["review"]["kept"].get("graded_excellent") == 1 and filtered["review"]["kept"]["graded_good"] == 2
    assert filtered["counts"]["correction"] == baseline["counts"]["correction"] - 2
    manifest = json.loads((tmp_path / "after" / "manifest.json").read_text())
    assert manifest["review"]["min_grade"] == "good" and manifest["review"]["ungraded"] == "keep"
    dropped = _export(store, tmp_path / "graded-only", "--min-grade", "good", "--ungraded", "drop")
    assert dropped["counts"]["correction"] == 3 and dropped["review"]["left_out"]["ungraded"] >= 1
    for name in ("login", "queue", "correction", "summary"):
        assert (screens / f"{name}.png").stat().st_size > 5_000, name
    print(f"screenshots: {screens}", file=sys.stderr)
