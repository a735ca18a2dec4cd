"""The dashboard's HTTP endpoints, one router per concern: `auth` (sign in and out), `queue`
(the queue page and the live feed), `review` (the inspection page and review actions), `media`
(frame and crop images), `stats`, `admin` (users, per-line thresholds), `export` (datasets)."""
