"""A throwaway test certificate for 127.0.0.1 (openssl, installed by the test command): the VEN's
webhook serves HTTPS with it and the test VTN trusts it as its CA."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestCert:
    __test__ = False
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_cert(directory: Path) -> TestCert:
    """A self-signed certificate for CN/SAN 127.0.0.1, valid one day. Fails (not skips) without openssl."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl binary not found: cannot make a test certificate (the test command installs it)")
    cert, key = directory / "hook.pem", directory / "hook.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return TestCert(cert, key)
