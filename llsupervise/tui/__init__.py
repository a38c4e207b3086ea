"""The terminal interface (textual); the only package that imports textual."""
