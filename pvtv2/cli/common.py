"""Helpers shared by the subcommands: user errors and model selection (tables: :mod:`pvtv2.text_table`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import list_models
from ..text_table import format_table  # noqa: F401  (the subcommands take it from here)


class CommandError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


def select_models(patterns: Sequence[str] | None) -> list[str]:
    """Model names matching any of the shell-style ``patterns`` (all models for none), in zoo order."""
    if not patterns:
        return list_models()
    chosen = {name for pattern in patterns for name in list_models(pattern)}
    if not chosen:
        raise CommandError(
            f"no model matches {' '.join(map(repr, patterns))}; known models: {', '.join(list_models())}"
        )
    return [name for name in list_models() if name in chosen]
