"""Command-line flags generated from a config class, so the jobs and `prodray` share one definition.

Owns the mapping field -> flag and back: `actor_cpus` is `--actor-cpus`, a section's fields carry its
name (`enhancer_replicas.num_gpus` is `--enhancer-replicas-num-gpus`); help is the field's
description, a Literal gives the choices, a bool is a switch. The fields, defaults and checks
themselves live in prodray/config.py; flags not given keep the config's defaults.
"""

import argparse
import types
import typing

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from prodray.config import ConfigError, _format_error

DRY_RUN_HELP = "print the resolved config as JSON and exit, starting nothing"


def config_fields(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    """(path, field) for every leaf field of `cls`, sections expanded, in declaration order."""
    fields = []
    for name, field in cls.model_fields.items():
        path = (*prefix, name)
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            fields += config_fields(section, path)
        else:
            fields.append((path, field))
    return fields


def flag_name(path: tuple[str, ...]) -> str:
    return "--" + "-".join(path).replace("_", "-")


def _dest(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _without_none(annotation):
    """Optional[X] -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _argument(path: tuple[str, ...], field: FieldInfo) -> dict:
    """add_argument keywords for one field. The default is SUPPRESS, so that only the flags given
    reach the config, which applies its own defaults (shown in the help)."""
    kind = _without_none(field.annotation)
    text = field.description or ""
    if kind is bool:
        action = argparse.BooleanOptionalAction if field.default is True else "store_true"
        return {"action": action, "help": text, "default": argparse.SUPPRESS}
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        kwargs = {"choices": list(choices), "type": type(choices[0])}
    elif kind in (int, float, str):
        kwargs = {"type": kind, "metavar": path[-1].upper()}
    else:
        raise TypeError(f"{_dest(path)}: no command-line form for a field of type {field.annotation!r}")
    if field.is_required():
        kwargs["required"] = True
    elif field.default is not None:
        text += f" (default: {field.default})"
    return {**kwargs, "help": text, "default": argparse.SUPPRESS}


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], dry_run: bool = True) -> None:
    """One flag per field of `cls` (see the module docstring), plus --dry-run."""
    for path, field in config_fields(cls):
        parser.add_argument(flag_name(path), dest=_dest(path), **_argument(path, field))
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)


def config_from_args(cls: type[BaseModel], args: argparse.Namespace):
    """The validated config from parsed flags; a bad value raises ConfigError naming flag and field."""
    tree: dict = {}
    for path, _ in config_fields(cls):
        if hasattr(args, _dest(path)):
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = getattr(args, _dest(path))
    try:
        config = cls.model_validate(tree)
    except ValidationError as exc:
        location = tuple(str(part) for part in exc.errors()[0]["loc"])
        raise ConfigError(f"{flag_name(location)}: {_format_error(exc)}" if location else _format_error(exc)) from None
    return config.check() if hasattr(config, "check") else config
