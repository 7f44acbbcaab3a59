"""User errors: one family the CLI catches and prints as one line (exit 2, no traceback).

A UserError is bad input or a missing prerequisite the user can fix: a config key, a missing file,
an empty store, a registry version that does not exist. Its message names what is wrong and where;
`hint` says what to do when the message alone does not. Anything else escaping a command is a bug
and keeps its traceback. Every module's own error (StoreError, IngestError, RegistryError, …)
subclasses UserError, so `tunestack` needs no list of them.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite; `str(e)` names what and where, `hint` what to do."""

    hint: str | None = None


class ConfigError(UserError, ValueError):
    """A config that cannot be used: every problem of one file, each naming its key.

    `ConfigError(source, key, message)` for one problem, `ConfigError.many(source, problems)` for
    several; `.source` is the file, `.key` the first problem's key, `.problems` all (key, message).
    """

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.problems: list[tuple[str, str]] = [(key, message)]
        super().__init__(self._text())

    @classmethod
    def many(cls, source: str, problems: list[tuple[str, str]]) -> ConfigError:
        err = cls(source, *problems[0])
        err.problems = list(problems)
        err.args = (err._text(),)
        return err

    @property
    def key(self) -> str:
        return self.problems[0][0]

    @property
    def message(self) -> str:
        return self.problems[0][1]

    def _text(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.key}: {self.message}"
        listed = "".join(f"\n  {k}: {m}" for k, m in self.problems)
        return f"{self.source}: {len(self.problems)} problems:{listed}"


class DataError(UserError, ValueError):
    """Training or evaluation data that is missing or unusable (a .npz, logs, an empty split)."""
