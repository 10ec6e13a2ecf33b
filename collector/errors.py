"""The exception hierarchy, in one place.

Every error the tool raises on purpose derives from ``AccessproofError`` and carries the exit
status of DESIGN §6, so the CLI maps errors to exit codes without knowing their kinds:

- ``ConfigError`` (3): the configuration is wrong; names file, section and key.
- ``InputError`` (3): an input file (HR export, allowlist) is wrong; names file and row/column.
- ``SourceError`` (2): a source could not be collected completely; names the source.
- ``IntegrityError`` (1): a pack or snapshot does not match its manifest.
"""

from __future__ import annotations


class AccessproofError(Exception):
    exit_code = 1


class ConfigError(AccessproofError):
    exit_code = 3

    def __init__(self, message: str, *, file: str | None = None, section: str | None = None,
                 key: str | None = None):
        self.file, self.section, self.key = file, section, key
        where = []
        if file:
            where.append(str(file))
        if section:
            where.append(f"[{section}]")
        if key:
            where.append(f"key '{key}'")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class InputError(AccessproofError):
    exit_code = 3

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None):
        self.file, self.row, self.column = file, row, column
        where = [str(file)] if file else []
        if row is not None:
            where.append(f"line {row}")
        if column:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class SourceError(AccessproofError):
    """A source failed: authentication, permission, a persistent server error, a bad page."""

    exit_code = 2

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"source '{source}': {message}")


class IntegrityError(AccessproofError):
    exit_code = 1
