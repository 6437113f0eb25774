"""The `camveil` command: one console script whose subcommands wire the unit (`agent`), the
backend (`dashboard`), provisioning and the measurement tools together. This package is the top
layer (docs/ARCHITECTURE.md): nothing imports it."""
