"""Ways to run a supervisor without the TUI: headless, and the hub that `attach` talks to."""
