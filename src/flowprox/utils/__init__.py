"""Utilities every layer may use: input validation, image files, peak memory, checkpoints."""
