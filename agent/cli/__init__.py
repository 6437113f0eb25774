"""`camveil` subcommands: one module each, registered in :mod:`agent.__main__`."""
