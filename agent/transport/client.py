"""paho's MQTT client with two repairs the transport needs (:class:`Client`), and the one-line
description of why a connection attempt failed (:func:`describe`)."""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


class Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (paho's loop swallows
    the exception and calls ``on_connect_fail`` without it), and closing the socket of a failed
    TLS handshake (paho 2.2 leaves it to the garbage collector: a ResourceWarning and an open
    descriptor per failed attempt)."""

    last_error: BaseException | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        context = self._ssl_context
        if context is None or not context.check_hostname:
            raise RuntimeError("the transport always verifies the broker's host name")
        ssl_sock = context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc}"
