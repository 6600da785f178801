"""The device-local PKI that lets the sync agent, and only it, read kubelet's node API.

A standalone kubelet has no API server to ask (no TokenReview for webhook authentication,
no SubjectAccessReview for webhook authorization), so its API on :10250 is protected by
x509 client authentication alone: ``authentication.x509.clientCAFile`` names a CA that
exists only for this device, and the only client certificate that CA ever signs is the
sync agent's. Anonymous requests are refused (401) and the read-only port is off.

Provisioning creates, per device:

- ``ca.crt``: the device CA (its private key is used once, here, and never written);
- ``kubelet.crt`` / ``kubelet.key``: kubelet's serving certificate (127.0.0.1, localhost),
  so the agent verifies it is talking to this kubelet;
- ``agent.crt`` / ``agent.key``: the agent's client certificate (CN ``edgefleet-sync``).

Everything is pure: the caller writes the PEM bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AGENT_CN = "edgefleet-sync"
VALIDITY = timedelta(days=3650)
CA_FILE = "ca.crt"
KUBELET_CERT = "kubelet.crt"
KUBELET_KEY = "kubelet.key"
AGENT_CERT = "agent.crt"
AGENT_KEY = "agent.key"
FILES = (CA_FILE, KUBELET_CERT, KUBELET_KEY, AGENT_CERT, AGENT_KEY)


@dataclass(frozen=True)
class KubeletPki:
    """PEM bytes by file name (see :data:`FILES`)."""

    files: dict[str, bytes]


def generate(device_id: str, *, now: datetime | None = None) -> KubeletPki:
    """A fresh device CA, kubelet serving certificate and agent client certificate."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"edgefleet device CA {device_id}")
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    kubelet_key = ec.generate_private_key(ec.SECP256R1())
    kubelet = (
        _builder(_name(f"kubelet {device_id}"), ca_name, kubelet_key.public_key(), now)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    agent_key = ec.generate_private_key(ec.SECP256R1())
    agent = (
        _builder(_name(AGENT_CN), ca_name, agent_key.public_key(), now)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KubeletPki(
        {
            CA_FILE: _cert_pem(ca),
            KUBELET_CERT: _cert_pem(kubelet),
            KUBELET_KEY: _key_pem(kubelet_key),
            AGENT_CERT: _cert_pem(agent),
            AGENT_KEY: _key_pem(agent_key),
        }
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
