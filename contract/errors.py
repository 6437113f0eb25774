"""The one exception tree of camveil.

Every error we raise derives from :class:`CamveilError`. Errors a user can cause (config,
model files, input files, provisioning) carry a message that says what is wrong and how to fix it.
Raise or log, never both.

::

    CamveilError
    ├── ConfigError                 bad or missing configuration (names the key and the fix)
    ├── ModelError                  a model file cannot be used
    │   ├── ModelMissingError       file absent / runtime not installed
    │   └── ModelHashError          sha256 differs from models/manifest.json
    ├── RuntimeUnavailableError     no TFLite runtime (ai-edge-litert / tflite-runtime) importable
    ├── CameraError                 a camera backend failed
    │   ├── CameraUnavailableError  cannot open / disappeared (reopened with backoff)
    │   ├── FrameError              a corrupt or undecodable frame (counted, dropped)
    │   └── EndOfStream             a finite, non-looping replay has no more frames
    ├── InputFileError              an input file for `camveil redact` / eval cannot be read
    ├── PrivacyError                the privacy guarantee would be broken: the frame is dropped
    │   ├── DetectorFailedError     the detector raised
    │   ├── DetectorTimeoutError    the detector did not answer in time
    │   ├── DetectorOverloadError   the detector is still busy with an earlier frame
    │   └── UnredactedDataError     something other than a RedactedFrame / sealed envelope
    │                               reached a publish or store path
    ├── EventError                  an event cannot be built as asked
    │   └── SnapshotTooLargeError   no JPEG of the frame fits under the size cap
    ├── SequenceError               the persisted seq high-water mark cannot be read or written
    ├── SerialPortError             a serial port cannot be opened or failed while in use
    ├── BrokerStartError            a local mosquitto (demo, chaos, tests) did not start or stop
    ├── ProvisioningError           USB-serial provisioning failed (says what to fix)
    │   ├── LinkTimeoutError        no valid reply after every retry
    │   ├── RefusedError            the peer answered with an ``error`` message (``.code``)
    │   └── ProtocolViolationError  a valid frame whose content breaks the protocol
    ├── OutboxError                 the durable outbox cannot be used (see agent.outbox)
    │   ├── OutboxFullError         disk or database full even after evicting the oldest, or
    │   │                           one envelope larger than the whole outbox bound
    │   └── OutboxCorruptError      the database file fails its integrity check at open
    └── EnvelopeError               a sealed message failed to open (see contract.envelope)
        ├── MalformedEnvelopeError  not exactly a camveil COSE_Sign1/COSE_Encrypt, or too large
        ├── UnknownKeyError         signer kid not trusted, or encrypted to a key we do not hold
        ├── BadSignatureError       the Ed25519 signature does not verify
        ├── DecryptError            ECDH / HKDF / ChaCha20-Poly1305 failed (wrong key, tampered)
        ├── BindingMismatchError    device / topic / seq / signer disagree with where it came
        ├── ReplayError             seq already accepted, or older than the replay window
        │   └── ReplayMemoryFullError   the unit remembers as many unexpired commands as it
        │                               may; new ones are refused until some expire
        ├── ExpiredError            a command past its expiry (or expiring implausibly late)
        └── KeyFileError            a key file cannot be used (names the file and the fix)
"""

from __future__ import annotations


class CamveilError(Exception):
    """Base of every camveil error."""


class ConfigError(CamveilError):
    """Configuration is invalid; the message names the key and the fix."""


class ModelError(CamveilError):
    """A model file cannot be used."""


class ModelMissingError(ModelError):
    """A model file is absent."""


class ModelHashError(ModelError):
    """A model file's sha256 does not match the manifest."""


class RuntimeUnavailableError(CamveilError):
    """No TFLite runtime can be imported."""


class CameraError(CamveilError):
    """A camera backend failed."""


class CameraUnavailableError(CameraError):
    """The camera cannot be opened or has disappeared."""


class FrameError(CameraError):
    """A frame is corrupt or cannot be decoded."""


class EndOfStream(CameraError):  # noqa: N818 - an end, not an error: the name says what it is
    """A finite, non-looping source (replay) has delivered its last frame; not retried."""


class InputFileError(CamveilError):
    """An input file cannot be read or decoded."""


class PrivacyError(CamveilError):
    """Continuing would break the privacy guarantee; the frame is dropped."""


class DetectorFailedError(PrivacyError):
    """The detector raised an exception."""


class DetectorTimeoutError(PrivacyError):
    """The detector did not answer within its deadline."""


class DetectorOverloadError(PrivacyError):
    """The detector is still busy with an earlier frame."""


class UnredactedDataError(PrivacyError):
    """Something other than redacted / sealed data reached a publish or store path."""


class EventError(CamveilError):
    """An event cannot be built from what was given."""


class SnapshotTooLargeError(EventError):
    """No JPEG of the frame, at the lowest allowed quality and size, fits under the cap."""


class SequenceError(CamveilError):
    """The persisted seq high-water mark cannot be read or written; names the file and the fix."""


class OutboxError(CamveilError):
    """The durable outbox cannot be used."""


class OutboxFullError(OutboxError):
    """The disk or database is full even after evicting the oldest envelopes (or one envelope
    is larger than the whole outbox bound); the envelope was not stored and this is counted."""


class OutboxCorruptError(OutboxError):
    """The outbox database fails its integrity check at open; the message says how to recover."""


class EnvelopeError(CamveilError):
    """A sealed message failed to open."""


class MalformedEnvelopeError(EnvelopeError):
    """The bytes are not exactly a camveil COSE_Sign1 / COSE_Encrypt envelope."""


class UnknownKeyError(EnvelopeError):
    """The signer's kid is not trusted, or the message is encrypted to a key we do not hold."""


class BadSignatureError(EnvelopeError):
    """The COSE_Sign1 signature does not verify under the signer's known public key."""


class DecryptError(EnvelopeError):
    """Key agreement or authenticated decryption failed (wrong key or tampered ciphertext)."""


class BindingMismatchError(EnvelopeError):
    """Device, topic, seq or signer in the message disagree with where and how it arrived."""


class ReplayError(EnvelopeError):
    """The (sender, device, seq) was already accepted, or is older than the replay window."""


class ReplayMemoryFullError(ReplayError):
    """The unit already remembers its bound of unexpired commands; a new one is refused until
    some expire (forgetting one early would let it be replayed)."""


class ExpiredError(EnvelopeError):
    """A command is past its expiry time, or claims an implausibly distant one."""


class KeyFileError(EnvelopeError):
    """A key file cannot be read, parsed or is unsafely readable; names the file and the fix."""


class SerialPortError(CamveilError):
    """The serial port cannot be opened or failed while in use; the message says what to check."""


class ProvisioningError(CamveilError):
    """Provisioning failed; the message says what is wrong and how to fix it."""


class LinkTimeoutError(ProvisioningError):
    """No valid reply arrived after every retry."""


class RefusedError(ProvisioningError):
    """The peer replied with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProtocolViolationError(ProvisioningError):
    """A valid frame whose content breaks the protocol (missing field, wrong type, bad proof)."""


class BrokerStartError(CamveilError):
    """mosquitto did not come up (or did not stop); the message holds the end of its log."""
