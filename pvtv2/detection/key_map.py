"""Renaming a detector's head weights between our state dict and a release layout, both ways, from one table.

Each rule pairs a key pattern of ours with the release's, ``{name}`` standing for one dotted part that the two
share (``"roi_heads.mask_head.{i}.0.{p}"`` and ``"roi_head.mask_head.convs.{i}.conv.{p}"``), with optional
functions for the tensors whose layout differs (each the other's inverse). Writing a rule once gives both
directions, so a key map cannot be exact one way and not the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ..engine.release import ReleaseFileError

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KeyRule:
    """``ours`` <-> ``release``; ``to_release`` / ``to_ours`` change the tensor on the way (or not)."""

    ours: str
    release: str
    to_release: Transform | None = None
    to_ours: Transform | None = None


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^.]+)" for i, p in enumerate(parts)) + "$")


class KeyMap:
    """The rules of one detector's head (see the module docstring); ``title`` names it in errors."""

    def __init__(self, title: str, rules: Iterable[KeyRule]) -> None:
        self.title = title
        self.rules = tuple(rules)
        self._ours = [_pattern(r.ours) for r in self.rules]
        self._release = [_pattern(r.release) for r in self.rules]

    def to_release(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our head weights under the release's names and layouts."""
        return self._rename(state, self._ours, lambda rule: (rule.release, rule.to_release), "ours")

    def to_ours(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Release head weights under our names and layouts."""
        return self._rename(state, self._release, lambda rule: (rule.ours, rule.to_ours), "release")

    def covers(self, release_keys: Iterable[str]) -> bool:
        """Whether every one of ``release_keys`` is a weight of this head."""
        return all(self._match(key, self._release) is not None for key in release_keys)

    def _match(self, key: str, patterns: list[re.Pattern[str]]) -> tuple[KeyRule, re.Match[str]] | None:
        for rule, pattern in zip(self.rules, patterns):
            if match := pattern.match(key):
                return rule, match
        return None

    def _rename(self, state: Mapping[str, torch.Tensor], patterns: list[re.Pattern[str]],
                target: Callable[[KeyRule], tuple[str, Transform | None]], side: str) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state.items():
            found = self._match(key, patterns)
            if found is None:
                if side == "ours":  # our own model's key: a rule is missing, a bug
                    raise KeyError(f"{key} has no release name in the {self.title} key map")
                raise ReleaseFileError(f"{key} is not a weight of MMDetection's {self.title} head")
            rule, match = found
            template, transform = target(rule)
            out[template.format(**match.groupdict())] = value if transform is None else transform(value)
        return out
