"""The one base error type of llsupervise; every module raises a subclass of it."""


class LLSuperviseError(Exception):
    """Base class of every error llsupervise reports to its user."""
