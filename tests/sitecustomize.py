"""Loaded at start-up by every Python process the tests spawn (tests/ is on their
PYTHONPATH): refuse connections to anything but loopback, as the test session does,
so a subprocess that slips (say, a credential probing a metadata address) fails
loudly instead of sending traffic."""

import os
import socket

if os.environ.get("SEALVEC_TEST_LOOPBACK_ONLY") == "1":
    _connect = socket.socket.connect

    def _loopback_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host != "localhost" and not (host.startswith("127.") or host == "::1"):
                raise ConnectionRefusedError(f"test guard: refusing to connect to {host}")
        return _connect(self, address)

    socket.socket.connect = _loopback_only
