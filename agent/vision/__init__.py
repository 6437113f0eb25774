"""Detection, tracking and embedding on the device."""
