"""What the root command hands every subcommand: the validated settings."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from foveal.settings import Settings


@dataclass(frozen=True)
class AppState:
    settings: Settings


def settings_of(ctx: typer.Context) -> Settings:
    state = ctx.find_root().obj
    assert isinstance(state, AppState), "the root callback builds the settings"
    return state.settings
