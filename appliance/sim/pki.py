"""A throwaway test PKI made with openssl: a CA, the broker's certificate, and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key."""

    cert: Path
    key: Path


class TestPki:
    """An EC P-256 CA in `directory` that issues server and client certificates on demand."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = directory / "ca.pem"
        self._ca_key = directory / "ca.key"
        if not self.ca.exists():
            self._openssl(
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                self._ca_key,
                "-out",
                self.ca,
                "-days",
                "30",
                "-subj",
                "/CN=HES test CA",
            )

    def issue(self, name: str, server: bool = False) -> Identity:
        """A certificate with CN=`name`; a server one is valid for localhost and 127.0.0.1."""
        identity = Identity(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        if identity.cert.exists():
            return identity
        csr, ext = self.directory / f"{name}.csr", self.directory / f"{name}.ext"
        ext.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            if server
            else "extendedKeyUsage=clientAuth\n"
        )
        self._openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            identity.key,
            "-out",
            csr,
            "-subj",
            f"/CN={name}",
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.ca,
            "-CAkey",
            self._ca_key,
            "-CAcreateserial",
            "-out",
            identity.cert,
            "-days",
            "30",
            "-extfile",
            ext,
        )
        return identity

    @staticmethod
    def _openssl(*args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
