"""A federation's TLS certificates and its SuperNodes' authentication keys, made with `cryptography`.

- `ensure_tls(directory, names)`: a CA (ca.crt, ca.key) and the SuperLink's certificate signed by it
  (server.pem, server.key) for the names nodes and the `flwr` CLI reach it by. Existing files are kept while they
  are valid for those names for at least RENEW_BEFORE; otherwise the server certificate is renewed with the same
  CA, so nodes that trust ca.crt keep working.
- `ensure_node_key(directory, name)`: an ECDSA P-384 key pair in OpenSSH format (<name>.key, <name>.pub), what
  Flower 1.39's SuperNode authentication takes (it rejects ed25519). The owner registers the .pub with
  `flwr supernode register`; the .key never leaves the operator's PC.

Private keys are written 0600 and atomically: a crash leaves the old file or none.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.common.files import write_bytes_atomic
from app.common.errors import ConfigError
from app.common.telemetry import get_logger

log = get_logger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 397  # the longest validity browsers and most TLS stacks accept for a server certificate
RENEW_BEFORE = datetime.timedelta(days=30)
LOCAL_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: Path, data: bytes, private: bool) -> None:
    write_bytes_atomic(path, data, 0o600 if private else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certificate(subject: str, key, issuer: x509.Name, signer, days: int, ca: bool,
                 names: Sequence[str] = (), not_after: datetime.datetime | None = None) -> x509.Certificate:
    now = _now()
    not_after = not_after or now + datetime.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # valid from a little before now: tolerates clocks a little behind ours
        .not_valid_before(min(now - datetime.timedelta(minutes=5), not_after - datetime.timedelta(days=1)))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        # Python 3.13's default TLS verification (X509 strict) refuses a server certificate without this
        issuer_key = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
        builder = (builder
                   .add_extension(issuer_key, critical=False)
                   .add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in names]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(signer, hashes.SHA256())


def _server_cert_fits(path: Path, ca_cert: x509.Certificate, names: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        covered = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    wanted = {_alt_name(n) for n in names}
    return (cert.issuer == ca_cert.subject and cert.not_valid_after_utc - _now() > RENEW_BEFORE
            and wanted <= set(covered))


def ensure_tls(directory: Path, names: Sequence[str] = LOCAL_NAMES, server_days: int = SERVER_DAYS,
               not_after: datetime.datetime | None = None) -> TlsFiles:
    """The CA and the SuperLink's certificate for `names` (DNS names or IP addresses) in `directory`, created
    or renewed as needed. `not_after` pins the server certificate's end (tests make expired ones with it)."""
    directory = Path(directory)
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise ConfigError("the SuperLink certificate needs at least one name: the host or IP nodes connect to")
    ca_key_path = directory / "ca.key"
    if files.ca_cert.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedvla federation CA")])
        ca_cert = _certificate("fedvla federation CA", ca_key, ca_name, ca_key, CA_DAYS, ca=True)
        _write(ca_key_path, _pem_key(ca_key), private=True)
        _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        log.info("ca_created", path=str(files.ca_cert))
    if not_after is None and _server_cert_fits(files.server_cert, ca_cert, names) and files.server_key.exists():
        return files
    server_key = ec.generate_private_key(ec.SECP384R1())
    cert = _certificate(names[0], server_key, ca_cert.subject, ca_key, server_days, ca=False, names=names,
                        not_after=not_after)
    _write(files.server_key, _pem_key(server_key), private=True)
    _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    log.info("server_certificate_created", path=str(files.server_cert), names=names,
             expires=cert.not_valid_after_utc.isoformat())
    return files


def ensure_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """(private, public) OpenSSH ECDSA P-384 key files for SuperNode authentication, created if missing."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"a node key needs a plain name like operator_0, got {name!r}")
    private, public = Path(directory) / f"{name}.key", Path(directory) / f"{name}.pub"
    if private.exists() and public.exists():
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + f" {name}\n".encode(),
           private=False)
    log.info("node_key_created", private=str(private), public=str(public))
    return private, public
