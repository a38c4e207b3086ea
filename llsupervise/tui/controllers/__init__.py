"""What the interface does with keys and the session's messages, one concern each: answering
the question, the keys that ask first, saving answers, notifications, redrawing."""
