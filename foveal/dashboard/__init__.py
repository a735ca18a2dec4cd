"""The review dashboard for QA staff (issue #8): a FastAPI app with server-rendered pages.

`create_app(settings)` builds it (`foveal serve dashboard` runs it under uvicorn; see
services/dashboard/README.md). Split by concern: `app` (factory, error translation, lifespan),
`users` (argon2 passwords, accounts, sign-in sessions), `csrf` (signed tokens), `web` (request
dependencies: who is signed in, CSRF guard, templates), `queue` (filters and keyset paging),
`inspection` (one inspection's evidence), `reviews` (review actions, idempotent), `live` (LISTEN/
NOTIFY → server-sent events), `stats` and `charts` (statistics as inline SVG), `export`
(reviewed data as a dataset), `routes/` (the HTTP endpoints), `templates/` and `static/`.
"""

from __future__ import annotations

from foveal.dashboard.app import create_app

__all__ = ["create_app"]
