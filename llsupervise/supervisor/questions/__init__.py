"""Questions raised by denials: de-duplication, conditional grants, answers kept as rules."""
