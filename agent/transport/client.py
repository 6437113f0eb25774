"""paho's MQTT client with two repairs the transport needs (:class:`Client`), and the one-line
description of why a connection attempt failed (:func:`describe`)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


class Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (paho's loop swallows
    the exception and calls ``on_connect_fail`` or ``on_disconnect`` without it), and closing
    the socket of a failed TLS handshake (paho 2.2 leaves it to the garbage collector: a
    ResourceWarning and an open descriptor per failed attempt).

    Under TLS 1.3 the client's side of the handshake ends before the broker has checked the
    client certificate, so a broker that refuses it (revoked, expired, another CA) sends its
    alert afterwards: the first read or write of the new connection fails with it, or finds
    the connection closed. The first such error of an attempt is kept in ``last_error`` too."""

    last_error: BaseException | None = None

    def reconnect(self) -> MQTTErrorCode:
        self.last_error = None  # a new attempt: nothing of the last one's story applies
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise

    def _sock_recv(self, bufsize: int) -> bytes:
        with self._first_error():
            return super()._sock_recv(bufsize)

    def _sock_send(self, buf: bytes | bytearray) -> int:
        with self._first_error():
            return super()._sock_send(buf)

    @contextlib.contextmanager
    def _first_error(self) -> Iterator[None]:
        """Keep the first socket error of this attempt (not "would block"), then re-raise."""
        try:
            yield
        except BlockingIOError:
            raise
        except OSError as exc:
            if self.last_error is None:
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


CLOSED_AFTER_HANDSHAKE = "the broker closed the connection right after the TLS handshake"
"""Reason of a connection the broker ended after the TLS handshake and before its CONNACK:
what a TLS 1.3 broker does to a client certificate it refuses (see :class:`Client`)."""


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        # OpenSSL's mnemonic, readable: SSLV3_ALERT_CERTIFICATE_REVOKED -> sslv3 alert ...
        return f"TLS: {exc.reason.lower().replace('_', ' ') if exc.reason else exc}"
    return f"{type(exc).__name__}: {exc}"


def describe_refusal(exc: BaseException | None) -> str:
    """Why a connection ended after the TCP connect and before the session existed: ``exc`` is
    the client's ``last_error`` (CONNACK refusal, the broker's TLS alert, or None: the broker
    just closed it)."""
    if exc is None:
        return CLOSED_AFTER_HANDSHAKE
    if isinstance(exc, ConnectionRefusedError) and str(exc).startswith("CONNACK"):
        return describe(exc)
    if isinstance(exc, ssl.SSLError):
        return f"{CLOSED_AFTER_HANDSHAKE}: {describe(exc).removeprefix('TLS: ')}"
    return f"{CLOSED_AFTER_HANDSHAKE} ({describe(exc)})"
