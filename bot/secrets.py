"""Secrets in configuration: where they may come from.

A secret field ``x`` (a ``SecretStr``) may be set from the environment, from ``x_file`` (a
file holding the value) or from ``x_env`` (the name of a variable holding it); never written
literally in the TOML file. ``read_secret_refs`` is the one reader of ``x_file``/``x_env``,
used by every config model that has secrets (``bot.config.Section``, the chat channels, the
FRITZ!Box source).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def secret_fields(model: type[BaseModel]) -> list[str]:
    return [
        name
        for name, field in model.model_fields.items()
        if field.annotation is not None and "SecretStr" in str(field.annotation)
    ]


def read_secret_refs(model: type[BaseModel], data: Any) -> Any:
    """Fill each secret field ``x`` from ``x_file`` (a file) or ``x_env`` (a variable name).

    The ``_file``/``_env`` keys are consumed here, so models need not declare them.
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name in secret_fields(model):
        path = data.pop(f"{name}_file", None)
        var = data.pop(f"{name}_env", None)
        if data.get(name) not in (None, ""):
            continue
        if path:
            try:
                data[name] = Path(str(path)).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
        elif var:
            if str(var) not in os.environ:
                raise ValueError(f"{name}_env: environment variable {var} is not set")
            data[name] = os.environ[str(var)]
    return data
