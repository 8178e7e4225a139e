"""The run file (``run.pt``): its typed layout, safe reading and atomic writing, and ``Run``."""

from resdoctor.runfile.io import RunFileError, read, validate, write

__all__ = ["RunFileError", "read", "validate", "write"]
