"""One module per section of the report; each has ``render(opened)``."""
