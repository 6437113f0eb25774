"""Settings for every test: Hypothesis checks properties, not speed (no per-example deadline;
the machine may be loaded, and speed is measured by `make bench`)."""

from hypothesis import settings

settings.register_profile("camveil", deadline=None)
settings.load_profile("camveil")
