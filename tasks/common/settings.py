"""What both flows' settings share: a frozen pydantic model that refuses unknown fields, the
fields every run has (device, decode threads, storage options), validation into one line, and
the helpers that keep secrets out of logs.

A flow's parameters are declared once, as the fields of its settings model (``BatchSettings``,
``RetrainSettings``): the flow builds the model from its arguments (``from_parameters``), the
flow's docstring lists them (``document_parameters``), and the CLI derives its flags from them
(``cli/settings_args.py``). A test checks that each flow's signature matches its model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import InvalidSettingsError

_SECRET_KEYS = ("secret", "key", "token", "password", "session")

F = TypeVar("F", bound=Callable[..., Any])


class FlowSettings(BaseModel):
    """Base of a flow's validated parameters; every field is checked before any work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(default="auto", description="auto (GPU when present), cpu, cuda or cuda:N.")
    decode_threads: int = Field(
        default=2, ge=1, le=64, description="Videos decoded at once (per shard in batch runs)."
    )
    storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec/s3fs options (endpoint_url, profile, anon, ...)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")

    @classmethod
    def from_parameters(cls, **parameters: Any) -> Self:
        """Validate a flow's parameters.

        Raises:
            InvalidSettingsError: one line naming each bad field (a ``ValueError``).
        """
        try:
            return cls(**parameters)
        except ValidationError as exc:
            raise InvalidSettingsError(format_validation_error(exc)) from None

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets in storage_options masked (for logs and run records)."""
        data = self.model_dump()
        if data.get("storage_options"):
            data["storage_options"] = mask_secrets(data["storage_options"])
        return data


def check_uri(value: str) -> str:
    """``value`` stripped; a ValueError when blank or when its ``scheme://`` is not a scheme."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if "://" in value and not value.split("://", 1)[0].replace("+", "").isalnum():
        raise ValueError(f"not a URI or path: {value!r}")
    return value


def check_uris(values: list[str] | None) -> list[str]:
    """Each of ``values`` through `check_uri` (None: an empty list); a ValueError on a blank
    entry."""
    cleaned = [v.strip() for v in values or []]
    if any(not v for v in cleaned):
        raise ValueError("must not contain empty entries")
    return [check_uri(v) for v in cleaned]


def document_parameters(settings: type[BaseModel]) -> Callable[[F], F]:
    """Decorator: append an ``Args:`` section built from ``settings``' field descriptions to a
    flow function's docstring, so Prefect shows each parameter's description (put it under
    ``@flow``)."""

    def decorate(fn: F) -> F:
        lines = [f"    {name}: {field.description or ''}"
                 for name, field in settings.model_fields.items()]
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\nArgs:\n" + "\n".join(lines) + "\n"
        return fn

    return decorate


def mask_secrets(options: Any) -> Any:
    """A copy of ``options`` with every value under a secret-looking key replaced by ``***``."""
    if isinstance(options, dict):
        return {
            k: "***" if any(s in str(k).lower() for s in _SECRET_KEYS) and k != "key_prefix"
            else mask_secrets(v)
            for k, v in options.items()
        }
    if isinstance(options, list | tuple):
        return [mask_secrets(v) for v in options]
    return options


def format_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field: ``invalid parameter 'batch_size': ...``."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        parts.append(f"invalid parameter {field!r}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
