"""Throwaway TLS material for tests: a self-signed CA and certificates it signs, as PEM files
(`cryptography`, which authlib already brings)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issued:
    certificate: Path  # PEM certificate
    key: Path  # PEM private key (PKCS#8, unencrypted, mode 0600)

    def combined(self) -> Path:
        """Key and certificate in one file (Kafka's PEM keystore)."""
        path = self.certificate.with_suffix(".keystore.pem")
        write_private(path, self.key.read_bytes() + self.certificate.read_bytes())
        return path


def write_private(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(data)


def certificate_authority(folder: Path) -> Issued:
    """A self-signed CA, valid for a day: folder/ca.pem and folder/ca.key."""
    return _issue(folder, "ca", None)


def issue(folder: Path, name: str, ca: Issued) -> Issued:
    """A certificate for 127.0.0.1 and localhost (server and client use), signed by `ca`."""
    return _issue(folder, name, ca)


def _issue(folder: Path, name: str, ca: Issued | None) -> Issued:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"drawdown test {name}")])
    if ca is None:
        issuer, signing_key = subject, key
    else:
        issuer = x509.load_pem_x509_certificate(ca.certificate.read_bytes()).subject
        signing_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True))
    if ca is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    certificate = builder.sign(signing_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    issued = Issued(folder / f"{name}.pem", folder / f"{name}.key")
    issued.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    write_private(issued.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return issued
