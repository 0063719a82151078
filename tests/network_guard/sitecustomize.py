"""Loaded by the interpreter of `tests/test_offline.py`'s subprocesses (on PYTHONPATH): every
attempt to resolve a host name or open a connection is recorded in $NETWORK_LOG and refused."""

import os
import socket


def _refuse(kind):
    def refuse(*args, **kwargs):
        with open(os.environ["NETWORK_LOG"], "a") as log:
            log.write(f"{kind} {args[:2]!r}\n")
        raise OSError(f"network access refused in this test: {kind}")
    return refuse


socket.getaddrinfo = _refuse("getaddrinfo")
socket.create_connection = _refuse("create_connection")
socket.socket.connect = _refuse("connect")
socket.socket.connect_ex = _refuse("connect_ex")
