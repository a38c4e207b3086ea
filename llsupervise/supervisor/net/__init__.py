"""Network mediation: bind and connect judged by a thread restricted with the port rules."""
