"""imagebuilder: a Java application becomes a minimal, immutable machine image."""

__version__ = "0.1.0"
