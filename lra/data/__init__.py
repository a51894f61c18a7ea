"""LRA tasks: one module per task family, each registering its DataModule in `TASKS`."""
