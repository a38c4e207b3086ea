"""The supervisor: serves the supervised command's trapped syscalls and answers its denials."""
