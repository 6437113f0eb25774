"""Face detection and tracking on the device: detectors (CenterFace, BlazeFace, tiled, merged),
NMS, the hold-over tracker and the fail-closed guard; face embeddings kept in memory and the
anonymous re-identification built on them (off by default)."""
