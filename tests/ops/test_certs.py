"""app.ops.certs: the CA, the SuperLink certificate (names, renewal, expiry) and node keys Flower accepts."""

import datetime
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from app.ops.certs import ensure_node_key, ensure_tls
from app.common.errors import ConfigError


def san(path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}


def test_the_server_certificate_is_signed_by_the_ca_for_the_names_asked(tmp_path):
    files = ensure_tls(tmp_path, ["superlink", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert san(files.server_cert) == {"superlink", "10.0.0.5"}
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_files_are_kept_while_valid_and_a_new_name_renews_only_the_server_certificate(tmp_path):
    first = ensure_tls(tmp_path, ["superlink"])
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    assert ensure_tls(tmp_path, ["superlink"]).server_cert.read_bytes() == server
    ensure_tls(tmp_path, ["superlink", "fl.example.org"])
    assert first.ca_cert.read_bytes() == ca  # nodes trusting ca.crt need no change
    assert san(first.server_cert) == {"superlink", "fl.example.org"}


def test_an_expiring_certificate_is_renewed(tmp_path):
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    files = ensure_tls(tmp_path, ["superlink"], not_after=soon)
    ensure_tls(tmp_path, ["superlink"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert cert.not_valid_after_utc > soon + datetime.timedelta(days=300)


def test_a_certificate_needs_a_name(tmp_path):
    with pytest.raises(ConfigError, match="at least one name"):
        ensure_tls(tmp_path, [" "])


def test_node_keys_are_openssh_ecdsa_p384_as_flower_loads_them(tmp_path):
    private, public = ensure_node_key(tmp_path, "operator_0")
    key = load_ssh_private_key(private.read_bytes(), password=None)
    assert key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert ensure_node_key(tmp_path, "operator_0") == (private, public)  # kept, not replaced


def test_a_node_key_name_is_a_plain_name(tmp_path):
    with pytest.raises(ConfigError, match="plain name"):
        ensure_node_key(tmp_path, "../operator_0")


def test_a_strict_tls_client_accepts_the_server_certificate(tmp_path):
    """What Python 3.13 (the images) checks by default, and what gRPC's handshake amounts to: a TLS handshake in
    memory between the certificate's server and a client that trusts only ca.crt."""
    import ssl

    files = ensure_tls(tmp_path, ["superlink"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=files.ca_cert)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    pipes = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(pipes[0], pipes[1], server_hostname="superlink")
    server = server_ctx.wrap_bio(pipes[2], pipes[3], server_side=True)
    done = set()
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        pipes[2].write(pipes[1].read())
        pipes[0].write(pipes[3].read())
    assert done == {"client", "server"}
