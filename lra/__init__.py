"""lra: a Long Range Arena harness that compares token mixers at matched parameter counts."""

__version__ = "0.1.0"
