"""`camveil` subcommands: one module each, registered in :mod:`camveil.__main__`."""
