"""Kernel operations performed for the child and judged by Landlock: brokers, the operations
themselves, the child's credentials and CPU placement, and reading its /proc."""
