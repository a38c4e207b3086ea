"""Serving trapped syscalls: receive, decode, and perform each in a thread restricted like its
generation, handing only denials over to the supervisor."""
