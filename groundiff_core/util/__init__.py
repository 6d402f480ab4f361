"""Helpers written once for the whole package (min-max, phrase checks, files, fingerprints, environment)."""
