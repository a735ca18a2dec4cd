"""The dashboard in a real browser: Playwright driving Debian's chromium (`/usr/bin/chromium`,
headless, through `executable_path`; installed with apt when missing) against a real uvicorn
server and the real PostgreSQL. Sign in, open the queue, review inspections with the keyboard
only and find the reviews in PostgreSQL; a sequence's strip shows every frame, the selected ones
numbered, and a click enlarges one; a frame written through the pipeline's write path appears in
the live feed within 2 s; an anonymous write and a forged cross-site form are refused.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_browser.py`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from foveal.storage.models import Review
from tests.dashboard.conftest import PASSWORD, Env

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when it is missing (CI runs as root)."""
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                pytest.skip(f"could not install chromium: {done.stderr[-500:]}")
    return CHROMIUM


@pytest.fixture
def page(chromium: str, server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(base_url=server, viewport={"width": 1400, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(10_000)
        yield tab
        browser.close()


def _sign_in(page: object, name: str) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    page.goto("/")  # redirected to the sign-in form
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#queue")


def _reviews(env: Env, inspection: int) -> list[Review]:
    with env.sessions() as session:
        return list(
            session.scalars(select(Review).where(Review.inspection_id == inspection).order_by(Review.id))
        )


def _until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_review_with_the_keyboard_is_persisted(env: Env, page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    env.add_user("kb")
    first = env.inspection(defect="crack", seed=61, uncertain=True, line="line-kb")
    second = env.inspection(defect="scratch", seed=62, uncertain=True, line="line-kb")
    _sign_in(page, "kb")
    page.goto("/?line=line-kb")
    rows = page.locator("#queue tbody tr[data-id]")
    assert rows.count() == 2
    order = [int(rows.nth(k).get_attribute("data-id") or 0) for k in range(2)]
    assert sorted(order) == sorted([first, second])
    page.keyboard.press("Enter")  # the first row is selected
    page.wait_for_url(f"**/inspections/{order[0]}?line=line-kb")
    page.keyboard.press("c")  # confirm, then the page moves on to the next in the queue
    page.wait_for_url(f"**/inspections/{order[1]}?line=line-kb")
    page.keyboard.press("t")
    page.keyboard.press("3")  # the third type of the taxonomy: crack
    # a comment straight after, while the relabel may still be in flight: it waits its turn, and
    # the pane it is typed into stays open (its "u" is text, not "back to the queue")
    page.keyboard.press("m")
    page.keyboard.type("seen under the lamp")
    page.keyboard.press("Control+Enter")
    _until(lambda: len(_reviews(env, order[1])) == 2)
    confirmed, reviewed = _reviews(env, order[0]), _reviews(env, order[1])
    assert [(r.action, r.reviewer, r.corrected_verdict) for r in confirmed] == [("confirm", "kb", "defect")]
    assert [(r.action, r.corrected_type) for r in reviewed[:1]] == [("relabel", "crack")]
    assert reviewed[1].action == "comment" and reviewed[1].note == "seen under the lamp"
    assert page.url.endswith(f"/inspections/{order[1]}?line=line-kb")
    page.keyboard.press("u")
    page.wait_for_selector("#queue")


def test_pipeline_frame_appears_in_the_live_feed_within_two_seconds(env: Env, page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    env.add_user("live")
    _sign_in(page, "live")
    page.wait_for_function("document.querySelector('#live-dot').className.includes('on')")
    written = time.monotonic()
    inspection = env.inspection(seed=63, line="line-live")
    page.wait_for_selector(f"#live-feed li[data-id='{inspection}']", timeout=2_000)
    assert time.monotonic() - written < 2.0


def test_anonymous_write_and_forged_form_are_refused(env: Env, page: object, server: str) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    env.add_user("victim")
    inspection = env.inspection(seed=64)
    anonymous = page.request.post(
        f"/api/inspections/{inspection}/reviews",
        data={"action": "reject", "request_id": "6f1c7d4e-0000-4000-8000-000000000001"},
    )
    assert anonymous.status in (401, 403)
    _sign_in(page, "victim")
    # A page elsewhere posts a form to the dashboard in the signed-in browser: no CSRF token.
    page.goto("about:blank")
    page.set_content(f"""<form id="f" method="post" action="{server}/inspections/{inspection}/reviews">
        <input name="action" value="reject"><input name="request_id"
        value="6f1c7d4e-0000-4000-8000-000000000002">
        </form>""")
    with page.expect_response(lambda r: "/reviews" in r.url) as answer:
        page.evaluate("document.getElementById('f').submit()")
    assert answer.value.status == 403
    assert _reviews(env, inspection) == []


def test_sequence_strip_shows_every_frame_and_a_click_enlarges_it(env: Env, page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    env.add_user("strip-viewer")
    inspection, _, written = env.sequence(defect="scratch", seed=3, line="line-strip")
    chosen = [crop.frame_index for crop in written.steps[0].crops]
    _sign_in(page, "strip-viewer")
    page.goto(f"/inspections/{inspection}")
    figures = page.locator("#strip figure")
    assert figures.count() == 8
    marks = page.locator("#strip figure.selected")
    numbered = {int(mark.get_attribute("data-selection") or 0): int(mark.get_attribute("data-frame") or 0)
                for mark in marks.all()}  # selection number → frame
    assert [numbered[n] for n in sorted(numbered)] == chosen
    assert page.locator("#strip figure.selected .pick").all_inner_texts() == [
        str(n) for n in sorted(numbered, key=lambda n: numbered[n])]
    last = figures.nth(7).locator("img")
    last.scroll_into_view_if_needed()
    last.click()
    lightbox = page.locator("#lightbox")
    lightbox.wait_for(state="visible")
    assert (lightbox.locator("img").get_attribute("src") or "").endswith(f"/media/frames/{inspection}/7")
    page.wait_for_function("document.querySelector('#lightbox img').naturalWidth > 0")
    page.keyboard.press("Escape")
    lightbox.wait_for(state="hidden")
