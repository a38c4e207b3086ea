"""The command's terminal in the Output pane: its pty, the emulator that reads what it
writes, and the pane that draws it and sends it keys."""

from llsupervise.tui.terminal.pane import TerminalPane
from llsupervise.tui.terminal.pty import Pty

__all__ = ["Pty", "TerminalPane"]
