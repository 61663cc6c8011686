"""Errors a user can fix. The CLI prints them without a traceback and exits with code 2."""

import re


class UserError(ValueError):
    """Bad input from the user: a config, a YAML file, a CLI argument, a study, a device."""


def first_error(exc) -> str:
    """The first error of a pydantic ValidationError as 'key.path: message'."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if loc and re.match(r"^[\w\[\].]+: ", msg):  # a validator naming a field inside loc
        return f"{loc}.{msg}"
    return f"{loc}: {msg}" if loc else msg
