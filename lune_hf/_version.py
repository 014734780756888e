"""The package version (its own module: low-level code reads it without importing the trainer)."""

__version__ = "0.1.0"
