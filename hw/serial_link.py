"""The pyserial implementation of :class:`provisioning.serial_proto.SerialLink`.

``pyserial`` is imported here only, when a port is opened, with an install hint if it is missing.
A port is a context manager::

    with PySerialLink("/dev/ttyACM0") as link:     # or any pyserial URL: "loop://", "rfc2217://..."
        link.write(frame); data = link.read(0.5)
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Final

from contract.errors import SerialPortError

logger = logging.getLogger(__name__)

DEFAULT_BAUDRATE: Final = 115200


class PySerialLink:
    """A serial port (or pyserial URL) as a SerialLink; opened by ``__enter__``/:meth:`open`."""

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUDRATE) -> None:
        self.port = port
        self.baudrate = baudrate
        self._serial: Any = None

    def open(self) -> PySerialLink:
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - pyserial is a dependency
            raise SerialPortError(
                "pyserial is not installed: pip install pyserial (or apt install python3-serial)"
            ) from exc
        try:
            self._serial = serial.serial_for_url(
                self.port, baudrate=self.baudrate, timeout=0, write_timeout=5.0, exclusive=True
            )
        except (serial.SerialException, ValueError) as exc:
            raise SerialPortError(
                f"cannot open serial port {self.port}: {exc}; check the cable, the device name "
                "(ls /dev/ttyACM* /dev/ttyGS0) and that your user may use it (group dialout)"
            ) from None
        self._serial.reset_input_buffer()
        return self

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def __enter__(self) -> PySerialLink:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, timeout: float) -> bytes:
        ser = self._port()
        try:
            ser.timeout = max(timeout, 0.0)
            first: bytes = ser.read(1)
            if not first:
                return b""
            ser.timeout = 0
            waiting = ser.in_waiting
            return first + (ser.read(waiting) if waiting else b"")
        except Exception as exc:  # serial.SerialException, OSError on unplug
            raise SerialPortError(f"reading from {self.port} failed: {exc}") from None

    def write(self, data: bytes) -> None:
        ser = self._port()
        try:
            ser.write(data)
            ser.flush()
        except Exception as exc:  # serial.SerialException / SerialTimeoutException / OSError
            raise SerialPortError(f"writing to {self.port} failed: {exc}") from None

    def _port(self) -> Any:
        if self._serial is None:
            raise SerialPortError(f"serial port {self.port} is not open (use it as a context)")
        return self._serial
