"""The supervisor layer's rules: the kernel objects they bind to and the committed state."""
