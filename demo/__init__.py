"""The self-contained demo (make demo)."""
