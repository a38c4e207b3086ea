"""Learning mode: run a command with nothing denied, record what Landlock would mediate, and
turn the recording into a least-privilege policy file.

``recording`` is the data (pure), ``recorder`` fills it from a running command (syscalls),
``synthesis`` turns it into rules (pure), ``render`` writes them as a policy file (pure),
``summary`` says what to review, and ``command`` is the ``llsupervise learn`` entry point.
"""
