"""camveil agent: the privacy pipeline and the daemon."""

__version__ = "0.1.0"
