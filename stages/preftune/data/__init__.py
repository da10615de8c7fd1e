"""The rows: the built-in task and its gold checker, user formats, the length rule, the split, encoding."""
