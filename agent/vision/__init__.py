"""Face detection and tracking on the device: detectors (CenterFace, BlazeFace, tiled, merged),
NMS, the hold-over tracker and the fail-closed guard."""
