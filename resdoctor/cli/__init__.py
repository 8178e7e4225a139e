"""The ``resdoctor`` command line: parse, call the core, render."""
