"""The one exception type the CLI turns into a one-line message and an exit code."""

import difflib


class TlcliError(Exception):
    """A problem the user can fix; `exit_code` follows the CLI's convention (2 = bad input)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def unknown_name(kind: str, name: str, choices, listing: str = "") -> TlcliError:
    """An error for an unknown name that suggests the closest known ones."""
    choices = sorted(choices)
    close = close_matches(name, choices)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    known = listing or f"Known: {', '.join(choices)}."
    return TlcliError(f"unknown {kind} '{name}'.{hint} {known}")


def close_matches(name: str, choices) -> list[str]:
    """Up to three known names that look like `name`, the closest first."""
    return difflib.get_close_matches(str(name).lower(), sorted(choices), n=3, cutoff=0.5)
