"""Storage: the PostgreSQL schema of foveal (SQLAlchemy 2 models), its Alembic migrations and
the engine and session factories. `models` holds the tables, `migrate` upgrades a database to the
schema (`foveal db upgrade`; `foveal stack up` does it too), `database` builds engines and
sessions whose transactions the caller owns. Nothing here is imported eagerly: import the module
you need, so that `import foveal.storage` stays cheap.
"""
