"""traitlens: find, explain, segment and compare the traits that tell visually similar species apart."""

__version__ = "0.2.0"
