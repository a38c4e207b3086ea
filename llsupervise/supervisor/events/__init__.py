"""What happens and what is answered: denials, decisions, the event log."""
