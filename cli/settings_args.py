"""Command-line flags derived from a flow's settings model, so each parameter is declared once
(its pydantic field: name, type, default, bounds, description) and the CLI cannot drift from it.

``source_dir`` becomes ``--source-dir``; ``str | None`` a flag taking a string; a ``Literal``
its choices; ``bool`` (default False) a switch; ``list[str]`` one or more values; a ``dict``
a JSON object. Flags left out are not put in the namespace (``argparse.SUPPRESS``), so the
model's own defaults apply, and the model validates every value as the flow does.
"""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Collection
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["add_settings_arguments", "parameters_from_args", "with_endpoint_url"]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _kind(annotation: Any) -> dict[str, Any]:
    """argparse keywords for one field's type."""
    annotation = _without_none(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return {"choices": list(get_args(annotation))}
    if origin is list:
        (item,) = get_args(annotation) or (str,)
        return {"nargs": "+", "type": item}
    if annotation is dict or origin is dict:
        return {"type": _json_object, "metavar": "JSON"}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no command-line flag for a field of type {annotation!r}")


def _help(field: FieldInfo) -> str:
    text = (field.description or "").rstrip(".")
    default = field.get_default()
    if ("default" not in text and default not in (None, False)
            and not field.is_required()):
        text += f" (default {default})"
    return text.replace("%", "%%")


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    settings: type[BaseModel],
    *,
    positional: Collection[str] = (),
    only: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> None:
    """Add one argument per field of ``settings`` to ``parser``.

    Args:
        parser: the (sub)command's parser.
        settings: a pydantic model such as ``BatchSettings``.
        positional: fields taken as positional arguments (in field order).
        only: add just these fields (default: all).
        skip: leave these fields out.
    """
    inherited = {name for base in settings.__mro__[1:]
                 if isinstance(base, type) and issubclass(base, BaseModel)
                 for name in getattr(base, "model_fields", {})}
    # the flow's own fields first, then those every flow shares (device, storage options, ...)
    fields = sorted(settings.model_fields.items(), key=lambda item: item[0] in inherited)
    for name, field in fields:
        if name in skip or (only is not None and name not in only):
            continue
        annotation = _without_none(field.annotation)
        if name in positional:
            kind = _kind(annotation)
            if not field.is_required() and kind.get("nargs") == "+":
                kind["nargs"] = "*"  # an optional list: none given is the default
            parser.add_argument(name, help=_help(field), **kind)
            continue
        flag = "--" + name.replace("_", "-")
        if annotation is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS,
                                help=_help(field))
            continue
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS,
                            required=field.is_required(), help=_help(field), **_kind(annotation))


def parameters_from_args(
    settings: type[BaseModel], args: argparse.Namespace, *, only: Collection[str] | None = None
) -> dict[str, Any]:
    """The flow parameters given on the command line: the fields of ``settings`` (or of them,
    ``only`` these) present in ``args``; flags left out are absent, so the defaults apply."""
    return {name: getattr(args, name) for name in settings.model_fields
            if hasattr(args, name) and (only is None or name in only)}


def with_endpoint_url(params: dict[str, Any], endpoint_url: str | None) -> dict[str, Any]:
    """``params`` with ``--endpoint-url`` (an S3-compatible server) added to its
    ``storage_options``; unchanged when no endpoint was given."""
    if not endpoint_url:
        return params
    options = {**(params.get("storage_options") or {}), "endpoint_url": endpoint_url}
    return {**params, "storage_options": options}
