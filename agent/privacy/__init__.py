"""The privacy guarantee: only this package can build a :class:`RedactedFrame`."""

from agent.privacy.redact import FillMode, RedactedFrame, RedactionConfig, redact, redaction_mask

__all__ = ["FillMode", "RedactedFrame", "RedactionConfig", "redact", "redaction_mask"]
