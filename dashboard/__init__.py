"""The backend side: what runs at the broker host and the operator's desk, never on a unit.

- :mod:`dashboard.listener`: shared-subscription ingest that verifies, decrypts and de-duplicates
  what units publish (`camveil listen`);
- :mod:`dashboard.command_client`: the operator's signed, expiring commands and their acks
  (`camveil cmd`).

It imports the wire contract (`contract`) and provisioning's inventory, never the unit's runtime
(`agent`); the unit never imports it (an import-linter contract in pyproject.toml).
"""
