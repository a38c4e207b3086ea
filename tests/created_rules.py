"""Shared by the tests of rules on paths the run creates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def created_rule(path: Path | str, access: str = '"abi.read_write"') -> str:
    """A supervisor rule on ``path``, which the run is to create (as ``learn`` writes it)."""
    return f"""
[[supervisor.path_beneath]]
allowed_access = [{access}]
parent = ["{path}"]
optional = true  # created by the run
"""


def bindings(events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``created_path`` events among ``events``."""
    return [e for e in events if e["event"] == "created_path"]
