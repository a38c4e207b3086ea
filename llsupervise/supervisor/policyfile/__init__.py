"""The policy file while a command runs: watch, reload and commit on save, persist answers."""
