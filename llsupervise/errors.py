"""The one base error type of llsupervise.

Every error reported to the user is a :class:`LLSuperviseError` (each subpackage has its own
subclasses). Two kinds of exception are deliberately not: ``OSError``s that carry an errno to
the supervised program's reply (``perform.credentials.CredentialsError`` is one), and
``perform.operations.KernelDecides``, a signal between modules that a request is left to the
kernel, never shown to anyone.
"""


class LLSuperviseError(Exception):
    """Base class of every error llsupervise reports to its user."""
