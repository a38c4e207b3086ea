"""llsupervise: an interactive supervisor for mutable Landlock domains."""

__version__ = "0.1.0"
