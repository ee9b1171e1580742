"""Config files of every task: a dataclass of sections, read from YAML, overridden from the command line,
validated, and written back as the resolved YAML.

A task declares its sections (dataclasses of plain fields) and a root class deriving from :class:`Config`
that names them::

    class DetectionConfig(Config):
        model: DetModelConfig
        data: DetDataConfig
        ...

Loading (:meth:`Config.load`, :meth:`Config.from_dict`) always validates: an unknown section or key, a
value of the wrong type, and a value outside the limits its field declares with :func:`checked` are
errors that name the key (``optim.epochs must be at least 1, got 0``); :meth:`Config.check` adds a
task's rules across fields. ``--key value`` overrides name a field as ``section.key`` or, since field
names are unique across sections, as ``key`` alone (``--optim.epochs 10`` or ``--epochs 10``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ..errors import InputError
from ..files import written_atomically

C = TypeVar("C", bound="Config")


class ConfigError(InputError):
    """A config file or override that does not fit the schema: names the key and what was expected."""


def checked(
    default: Any,
    *,
    min: float | None = None,  # noqa: A002 - the limit's name in the messages
    max: float | None = None,  # noqa: A002
    above: float | None = None,
    below: float | None = None,
    ordered: bool = False,
) -> Any:
    """A dataclass field with limits that loading checks: ``min``/``max`` inclusive, ``above``/``below``
    exclusive (each value of a tuple), ``ordered`` for a (low, high) pair. ``None`` values are not checked."""
    limits = {k: v for k, v in dict(min=min, max=max, above=above, below=below).items() if v is not None}
    return field(default=default, metadata=dict(limits=limits, ordered=ordered))


@dataclass
class RunSection:
    """Where and how a training run runs: the ``run`` section every task has (tasks add their own keys)."""

    output_dir: str = "runs/train"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on GPU: bf16 autocast, or fp16 autocast with a grad scaler. CPU runs in float32.
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    seed: int = 0
    # Continue a run: "auto" takes output_dir/last.pth when it exists; or the path of a checkpoint.
    resume: str | None = None


class Config:
    """Base of every task's config: its annotations name the sections, each a dataclass of fields; the
    subclass becomes a dataclass whose sections default to their dataclass's defaults."""

    # Keys that had another name, as ``"section.old": "new"``: a config saved with the old name (checkpoints
    # carry theirs) reads as the new one; giving both is an error. Not annotated: annotations are sections.
    RENAMED = types.MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, section_type in typing.get_type_hints(cls).items():
            setattr(cls, name, field(default_factory=section_type))
        dataclass(cls)

    @classmethod
    def sections(cls) -> dict[str, type]:
        """Section name -> its dataclass."""
        return typing.get_type_hints(cls)

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Every field as ``key -> section`` (field names are unique across sections)."""
        owner: dict[str, str] = {}
        for section, section_type in cls.sections().items():
            for f in dataclasses.fields(section_type):
                if f.name in owner:
                    raise TypeError(f"config field {f.name!r} is in sections {owner[f.name]!r} and {section!r}")
                owner[f.name] = section
        return owner

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None, source: str = "the config") -> C:
        """Build and validate a config from ``{section: {key: value}}``; keys left out keep their defaults."""
        data = data or {}
        sections = cls.sections()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be a mapping of sections ({', '.join(sections)}), "
                              f"got {type(data).__name__}")
        _check_known(data, sections, "section", source)
        built = {}
        for name, section_type in sections.items():
            values = data.get(name) or {}
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: section {name!r} must be a mapping of keys to values, got {values!r}")
            values = cls._renamed(name, values, source)
            hints = typing.get_type_hints(section_type)
            _check_known(values, hints, f"key of section {name!r}", source)
            try:
                built[name] = section_type(**{k: coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
            except ConfigError as error:
                raise ConfigError(f"{source}: {error}") from None
        config = cls(**built)
        config.validate(source)
        return config

    @classmethod
    def _renamed(cls, section: str, values: Mapping[str, Any], source: str) -> Mapping[str, Any]:
        """``values`` of ``section`` with the keys of :attr:`RENAMED` under their new names."""
        for key, new in cls.RENAMED.items():
            old_section, _, old = key.partition(".")
            if old_section != section or old not in values:
                continue
            if new in values:
                raise ConfigError(f"{source}: {section}.{old} was renamed {section}.{new}: give only {section}.{new}")
            values = {new if k == old else k: v for k, v in values.items()}
        return values

    @classmethod
    def load(cls: type[C], path: str | Path, overrides: Iterable[tuple[str, str]] = ()) -> C:
        """Read a YAML config and apply ``(key, value)`` overrides (``section.key`` or ``key``, value as text)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(error)}") from error
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from error
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must be a mapping of sections, got {type(data).__name__}")
        data = {section: dict(values) if isinstance(values, Mapping) else values for section, values in data.items()}
        for key, value in overrides:
            section, name = cls._override_key(key)
            if data.get(section) is None:  # absent, or an empty `section:` line
                data[section] = {}
            if not isinstance(data[section], dict):
                raise ConfigError(f"config file {path}: section {section!r} must be a mapping, got {data[section]!r}")
            data[section][name] = value
        return cls.from_dict(data, f"config file {path}")

    @classmethod
    def _override_key(cls, key: str) -> tuple[str, str]:
        """``"optim.epochs"`` or ``"epochs"`` -> ``("optim", "epochs")``."""
        owner = cls.keys()
        section, _, name = key.rpartition(".")
        if not section:
            if name not in owner:
                raise ConfigError(_unknown(name, owner, "config key", "--" + name))
            return owner[name], name
        if owner.get(name) != section:
            raise ConfigError(_unknown(key, [f"{s}.{k}" for k, s in owner.items()], "config key", "--" + key))
        return section, name

    def validate(self, source: str = "the config") -> None:
        """Every field within its declared limits, then the task's rules across fields (:meth:`check`)."""
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            for f in dataclasses.fields(values):
                _check_limits(getattr(values, f.name), f, f"{section.name}.{f.name}", source)
        try:
            self.check()
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    def check(self) -> None:
        """A task's rules across fields; raise :class:`ConfigError` naming the key(s)."""

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain sections of plain values (tuples as lists), as written to YAML and to checkpoints."""
        sections = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
                for name, values in sections.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the resolved config (every key, overrides applied) as YAML, whole or not at all."""
        with written_atomically(path) as temporary:
            temporary.write_text(self.to_yaml())


def check_option(value: Any, section: type, key: str, option: str) -> Any:
    """``value``, given on the command line as ``option``, held to the type and limits of the config field
    ``section.key`` it stands in for (so ``--stride 0`` is refused as ``test.slide_stride: 0`` would be);
    returns it. ``None`` (the option not given) passes."""
    if value is None:
        return None
    fields = {f.name: f for f in dataclasses.fields(section)}
    value = coerce(value, typing.get_type_hints(section)[key], option)
    problem = _limit_problem(value, fields[key], option)
    if problem:
        raise ConfigError(f"{problem} (as the config's {key})")
    return value


_LIMIT_TESTS = {
    "min": (lambda v, b: v >= b, "at least"),
    "max": (lambda v, b: v <= b, "at most"),
    "above": (lambda v, b: v > b, "greater than"),
    "below": (lambda v, b: v < b, "less than"),
}


def _check_limits(value: Any, f: dataclasses.Field, key: str, source: str) -> None:
    problem = _limit_problem(value, f, key)
    if problem:
        raise ConfigError(f"{source}: {problem}")


def _limit_problem(value: Any, f: dataclasses.Field, key: str) -> str | None:
    """What is wrong with ``value`` for field ``f`` (shown as ``key``) by its declared limits, or None."""
    if value is None:
        return None
    values = value if isinstance(value, tuple) else (value,)
    for limit, bound in f.metadata.get("limits", {}).items():
        test, words = _LIMIT_TESTS[limit]
        if not all(test(v, bound) for v in values):
            each = "each value of " if isinstance(value, tuple) else ""
            return f"{each}{key} must be {words} {bound:g}, got {_shown(value)}"
    if f.metadata.get("ordered") and list(values) != sorted(values):
        return f"{key} must be (low, high) with low <= high, got {_shown(value)}"
    return None


def _shown(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (from YAML, or text from the command line) as the type ``annotation`` of field ``key``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise ConfigError(f"{key} cannot be empty")
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # "0.08,1.0" or "[0.08, 1.0]" from the command line
            value = value.strip("[]() ").split(",")
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        return _number(value, annotation, key)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be text, got {value!r}")
        return value
    raise TypeError(f"config field {key} has a type the loader does not handle: {annotation}")


def _number(value: Any, annotation: type, key: str) -> int | float:
    # YAML reads 5e-4 (no dot) as text, so numbers are also parsed from strings.
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if annotation is int and isinstance(number, float) and number.is_integer() and isinstance(value, str):
        number = int(number)
    # NaN passes no limit test and fails none; infinity passes "at least": neither is a setting.
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if not isinstance(number, (int, float)) or (annotation is int and not isinstance(number, int)):
        raise ConfigError(f"{key} must be {'an integer' if annotation is int else 'a number'}, got {value!r}")
    return annotation(number)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its message spans several, with a caret)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None or mark is None:
        return " ".join(str(error).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _check_known(given: Mapping[str, Any], known: Iterable[str], what: str, source: str) -> None:
    for key in given:
        if key not in known:
            raise ConfigError(f"{source}: " + _unknown(str(key), known, what, key))


def _unknown(key: str, known: Iterable[str], what: str, shown: str) -> str:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return f"unknown {what} {shown!r}{hint}"
