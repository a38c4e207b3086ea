"""Policies shipped with llsupervise: the built-in default that ``run`` uses without
``--policy`` (``llsupervise policy default`` prints it)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from llsupervise.policy.document import PolicyDocument

#: How the built-in policy is named in the interface, the log and errors.
DEFAULT_SOURCE = "built-in default"


def default_text() -> str:
    """The built-in default policy, with its comments: a starting file."""
    # pkgutil, not importlib.resources: the same loader-aware read, without importing
    # zipfile and the resources readers (~8 ms of every run's start-up); imported here, as
    # a run with --policy never reads it.
    import pkgutil

    data = pkgutil.get_data(__name__, "default.toml")
    if data is None:  # a loader that cannot read package data
        raise FileNotFoundError(f"{__name__}: default.toml")
    return data.decode("utf-8")


def load_default(env: Mapping[str, str] | None = None) -> PolicyDocument:
    """The built-in default policy, its variables taken from ``env`` (default: ours)."""
    from llsupervise.policy.loader import parse_policy

    environment = dict(os.environ if env is None else env)
    if not environment.get("PWD"):
        try:
            environment["PWD"] = os.getcwd()
        except OSError:
            pass  # a deleted working directory: the policy does not use PWD
    return parse_policy(default_text(), DEFAULT_SOURCE, environment)


def is_default(document: PolicyDocument) -> bool:
    return document.source == DEFAULT_SOURCE
