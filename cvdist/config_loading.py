"""Loading a run configuration: a recipe's YAML defaults, ``--config`` files and ``key=value``
overrides merged over a typed schema (the sections in :mod:`cvdist.config`).

OmegaConf checks keys and types against the dataclasses; every problem (a missing file, bad
YAML, an unknown key, a wrong type, a value outside a choice field, NaN / inf, an interpolation
not allowed) raises :class:`~cvdist.config.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvdist.config import ConfigError, RunConfig, leaf_values, not_allowed
from cvdist.redact import redact_text


def load_config(
    *, yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), schema: type = RunConfig,
    allow_interpolation: bool = False,
) -> Any:
    """Build a typed config: ``schema`` defaults, then each YAML file in order, then ``key=value``
    overrides.

    Raises ConfigError for a missing or malformed file, an unknown key or a wrong type, and for
    an OmegaConf interpolation (``${oc.env:VAR}``, ``${other.key}``) in a file or an override
    unless ``allow_interpolation``: it would copy environment variables (tokens, passwords) into
    ``config.yaml`` and the W&B config. Returns an instance of ``schema`` (a plain dataclass).
    """
    layers = [OmegaConf.structured(schema)]
    for yaml_path in yaml_paths:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as error:  # yaml.YAMLError and friends
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if not allow_interpolation:
            _refuse_interpolation(layers[-1], where=f"config file {str(path)!r}")
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.05)")
    for item in overrides:
        try:
            layers.append(_override_layer(item, schema))
        except Exception as error:  # yaml.YAMLError from the value's YAML parse
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({str(error).splitlines()[0]}); quote values "
                "holding braces, commas or colons, e.g. data.train_shards=['shards/train-{000000..000009}.tar']"
            ) from None
        if not allow_interpolation:
            _refuse_interpolation(layers[-1], where=f"override {redact_text(item)!r}")
    try:
        config = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as error:
        raise ConfigError(_explain_omegaconf_error(error, schema)) from None
    _refuse_non_finite(config)
    return config


_INTERPOLATION = re.compile(r"(?<!\\)\$\{")  # a "${" that is not escaped as "\${"


def _refuse_interpolation(layer: Any, *, where: str) -> None:
    """ConfigError naming the first value of ``layer`` (an OmegaConf container) that holds an
    interpolation."""
    for key, value in leaf_values(OmegaConf.to_container(layer, resolve=False)):
        if isinstance(value, str) and _INTERPOLATION.search(value):
            raise ConfigError(
                f"{where}: {key}={redact_text(value)!r} uses an interpolation, which can copy environment "
                "variables (tokens, passwords) into config.yaml and W&B; write the value itself, escape it "
                "as \\${...}, or pass --allow-interpolation if you trust this config")


def _refuse_non_finite(config: Any) -> None:
    """ConfigError for a NaN or infinite number anywhere in the config (YAML reads ``.nan`` /
    ``.inf`` and overrides ``nan`` / ``inf`` as floats, which no field means)."""
    for key, value in leaf_values(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")


def _explain_omegaconf_error(error: OmegaConfBaseException, schema: type) -> str:
    key = getattr(error, "full_key", None) or "?"
    message = str(error).splitlines()[0]
    if type(error).__name__ == "ConfigKeyError":
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        section = _section_class(schema, parent)
        allowed = [f.name for f in dataclasses.fields(section)] if section else []
        return f"unknown config key {key!r}; allowed keys{' under ' + parent if parent else ''}: {', '.join(allowed)}"
    choices = _choices_of(schema, key)
    if choices is not None and hasattr(error, "value"):
        return not_allowed(key, error.value, choices)
    return f"bad value for config key {key!r}: {message}"


def _section_class(schema: type, dotted: str) -> Optional[type]:
    """The dataclass of the config section at ``dotted`` (``""`` = ``schema``), or None."""
    config_class = schema
    for part in filter(None, dotted.split(".")):
        hint = typing.get_type_hints(config_class).get(part)
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        config_class = hint
    return config_class


def _field_hint(schema: type, key: str) -> Any:
    """The type hint of the config field at ``key``, or None."""
    parent, _, name = key.rpartition(".")
    section = _section_class(schema, parent)
    return typing.get_type_hints(section).get(name) if section else None


def _choices_of(schema: type, key: str) -> Optional[tuple]:
    """The allowed values of the choice field (a ``Literal``) at ``key``, or None."""
    hint = _field_hint(schema, key)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _override_layer(item: str, schema: type) -> Any:
    """One ``key=value`` override as a config layer. The value is parsed as YAML, except that a
    text field keeps the text YAML 1.1 would read as a boolean (``name=off`` is the run "off", not
    "False")."""
    layer = OmegaConf.from_dotlist([item])
    key, _, raw = item.partition("=")
    value: Any = OmegaConf.to_container(layer, resolve=False)  # (an interpolation is refused later, unresolved)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) and _field_hint(schema, key) is str:
        OmegaConf.update(layer, key, raw, merge=False)
    return layer


RECIPE_USAGE = """usage: {prog} [--config FILE.yaml] [--allow-interpolation] [key=value ...]

Runs the recipe with its defaults ({defaults}), then FILE.yaml, then the overrides,
e.g. optim.lr=0.05 dist.strategy=zero2 train.max_steps=100 name=my-run.
--allow-interpolation lets values use OmegaConf interpolations such as ${{oc.env:VAR}}
(refused by default: they copy environment variables into config.yaml and W&B).
Config sections: {sections}."""


def load_recipe_config(argv: Sequence[str], *, default_yaml: str | Path, recipe: str,
                       schema: type = RunConfig) -> Any:
    """Parse a recipe's command line (``[--config FILE] key=value ...``) into a typed config.

    The recipe's own YAML is applied first, then ``--config`` files, then overrides. ``-h``
    prints the usage and the top-level sections and exits.
    """
    overrides, yaml_paths, allow_interpolation = [], [default_yaml], False
    items = list(argv)
    while items:
        item = items.pop(0)
        if item in ("-h", "--help"):
            sections = ", ".join(f.name for f in dataclasses.fields(schema))
            print(RECIPE_USAGE.format(prog=recipe, defaults=default_yaml, sections=sections))
            raise SystemExit(0)
        if item == "--config":
            if not items:
                raise ConfigError("--config needs a file name")
            yaml_paths.append(items.pop(0))
        elif item.startswith("--config="):
            yaml_paths.append(item.split("=", 1)[1])
        elif item == "--allow-interpolation":
            allow_interpolation = True
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item!r}; pass settings as key=value (e.g. optim.lr=0.05)")
        else:
            overrides.append(item)
    config = load_config(yaml_paths=yaml_paths, overrides=overrides, schema=schema,
                         allow_interpolation=allow_interpolation)
    config.recipe = recipe
    return config
