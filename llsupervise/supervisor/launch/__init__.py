"""Starting the supervised command: the launcher and the exec helper it runs."""
