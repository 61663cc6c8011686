"""Argument types shared by the commands: each parses one string or raises
`argparse.ArgumentTypeError`, which argparse prints as a one-line usage error (exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def csv(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated list of `kind` values (at least one), e.g. ``csv(int)("1, 2")``."""

    def parse(text: str) -> list[T]:
        try:
            items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one value")
        return items

    return parse


def whole(minimum: int, what: str = "a whole number") -> Callable[[str], int]:
    """A whole number >= `minimum`; `what` names it in the message (e.g. "a trial number")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive = whole(1)  # a whole number >= 1


def seconds(text: str) -> float:
    """A duration in seconds, finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value
