"""Sign-in, sessions, roles and CSRF on the real PostgreSQL: passwords stored as argon2id only,
every page needs a session, anonymous writes and forged forms are refused (and write nothing),
signing out and disabling a user end their sessions, admin pages refuse reviewers, and the
`foveal users add` command creates a user who can sign in.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_auth.py`.
"""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from foveal.cli import app as cli
from foveal.storage.models import Review, User, UserSession
from tests.dashboard.conftest import PASSWORD, Env, csrf_of, sign_in


def _reviews(env: Env) -> int:
    with env.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Review)) or 0)


def test_password_is_stored_as_an_argon2id_hash(env: Env) -> None:
    env.add_user("hash-check")
    with env.sessions() as session:
        stored = session.scalars(select(User.password_hash).where(User.username == "hash-check")).one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_pages_need_a_session(env: Env, client: TestClient) -> None:
    html = {"Accept": "text/html,application/xhtml+xml"}
    page = client.get("/", headers=html, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    assert client.get("/api/queue").status_code == 401
    assert client.get("/stats", headers=html, follow_redirects=False).status_code == 303
    assert client.get("/live").status_code == 401


def test_wrong_password_is_refused_and_right_one_signs_in(env: Env, client: TestClient) -> None:
    env.add_user("rita")
    token = csrf_of(client.get("/login").text)
    wrong = client.post("/login", data={"username": "rita", "password": "nope-nope", "csrf_token": token})
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    sign_in(client, "rita")
    assert client.get("/").status_code == 200


def test_anonymous_write_is_refused(env: Env, client: TestClient) -> None:
    inspection = env.inspection(seed=11)
    before = _reviews(env)
    body = {"action": "confirm", "request_id": str(uuid.uuid4())}
    bare = client.post(f"/api/inspections/{inspection}/reviews", json=body)
    # Even with a valid anonymous CSRF token (from the sign-in page) there is no session to act as.
    token = csrf_of(client.get("/login").text)
    with_token = client.post(
        f"/api/inspections/{inspection}/reviews", json=body, headers={"X-CSRF-Token": token}
    )
    assert bare.status_code == 403 and with_token.status_code == 401
    assert _reviews(env) == before


def test_forged_form_without_csrf_token_is_refused(env: Env, client: TestClient) -> None:
    env.add_user("forge-target")
    inspection = env.inspection(seed=12)
    sign_in(client, "forge-target")
    before = _reviews(env)
    forged = client.post(
        f"/inspections/{inspection}/reviews",
        data={"action": "reject", "request_id": str(uuid.uuid4())},
        follow_redirects=False,
    )
    wrong = client.post(
        f"/inspections/{inspection}/reviews",
        follow_redirects=False,
        data={"action": "reject", "request_id": str(uuid.uuid4()), "csrf_token": "0" * 64},
    )
    json_forged = client.post(
        f"/api/inspections/{inspection}/reviews", json={"action": "reject", "request_id": str(uuid.uuid4())}
    )
    assert forged.status_code == wrong.status_code == json_forged.status_code == 403
    assert "CSRF" in forged.json()["error"]
    assert _reviews(env) == before
    # The same form with the page's token goes through.
    token = csrf_of(client.get(f"/inspections/{inspection}").text)
    ok = client.post(
        f"/inspections/{inspection}/reviews",
        follow_redirects=False,
        data={"action": "reject", "request_id": str(uuid.uuid4()), "csrf_token": token},
    )
    assert ok.status_code == 303 and _reviews(env) == before + 1


def test_sign_out_and_disabling_end_sessions(env: Env, client: TestClient) -> None:
    env.add_user("leaver")
    token = sign_in(client, "leaver")
    client.post("/logout", data={"csrf_token": token})
    assert client.get("/api/queue").status_code == 401
    sign_in(client, "leaver")
    with env.sessions() as session, session.begin():
        user = session.scalars(select(User).where(User.username == "leaver")).one()
        user_id = user.id
    admin = TestClient(client.app)
    env.add_user("boss", "admin")
    admin_token = sign_in(admin, "boss")
    answer = admin.post(
        f"/admin/users/{user_id}", data={"active": "false", "csrf_token": admin_token}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert client.get("/api/queue").status_code == 401
    with env.sessions() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(UserSession).where(UserSession.user_id == user_id)
            )
            == 0
        )
    page = client.get("/login")
    again = client.post(
        "/login", data={"username": "leaver", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    assert again.status_code == 401


def test_admin_pages_refuse_reviewers_and_admins_manage_thresholds(env: Env, client: TestClient) -> None:
    env.add_user("plain")
    token = sign_in(client, "plain")
    assert client.get("/admin/users").status_code == 403
    refused = client.post(
        "/admin/thresholds", data={"line": "line-9", "review_below": "0.9", "csrf_token": token}
    )
    assert refused.status_code == 403
    admin = TestClient(client.app)
    env.add_user("chief", "admin")
    admin_token = sign_in(admin, "chief")
    assert admin.get("/admin/users").status_code == 200
    saved = admin.post(
        "/admin/thresholds",
        data={"line": "line-9", "review_below": "0.9", "csrf_token": admin_token},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    assert "line-9" in admin.get("/admin/thresholds").text
    created = admin.post(
        "/admin/users",
        data={
            "username": "newbie",
            "password": "long enough pw",
            "role": "reviewer",
            "csrf_token": admin_token,
        },
        follow_redirects=False,
    )
    assert created.status_code == 303
    sign_in(TestClient(client.app), "newbie", "long enough pw")


def test_users_add_command_creates_a_user_who_can_sign_in(
    env: Env, client: TestClient, monkeypatch: object
) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("FOVEAL_DATABASE_URL", env.settings.postgres_url)
    result = CliRunner().invoke(
        cli,
        ["users", "add", "cli-user", "--role", "admin", "--password-stdin"],
        input="from the command line\n",
    )
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(cli, ["users", "add", "cli-user", "--password-stdin"], input="whatever pw\n")
    assert again.exit_code != 0
    listed = CliRunner().invoke(cli, ["users", "list"])
    assert "cli-user" in listed.output and "admin" in listed.output
    sign_in(client, "cli-user", "from the command line")
