"""Integrations are found through the entry-point group ``accessproof.integrations``.

Built-ins are registered there too (pyproject.toml), so a third-party package adds a source the
same way the project does.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from .errors import ConfigError
from .integration import Integration

GROUP = "accessproof.integrations"


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> list[str]:
    return sorted(_entry_points())


@lru_cache(maxsize=None)
def _load(name: str) -> type[Integration]:
    cls = _entry_points()[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Integration)):
        raise TypeError(f"entry point {name!r} is not an Integration subclass")
    return cls


def get_integration(type_name: str, *, file: str | None = None,
                    section: str | None = None) -> type[Integration]:
    if type_name not in _entry_points():
        raise ConfigError(f"unknown integration type '{type_name}' (installed: "
                          f"{', '.join(available()) or 'none'})", file=file, section=section,
                          key="type")
    return _load(type_name)
