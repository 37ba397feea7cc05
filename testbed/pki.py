"""The test bed's PKI, made with ``cryptography`` (no openssl CLI needed).

Files under ``<state_dir>/pki``: a cluster CA, the apiserver's serving certificate for
loopback names, an admin client certificate in ``system:masters``, a front-proxy CA and its
client certificate (the aggregation layer's requestheader authentication), the
service-account signing key pair, and a serving certificate for the metrics adapter. Created
once and reused; ``down`` leaves them, ``up --fresh`` removes them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=3650)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _ca(cn: str):
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, cn: str, *, org: str | None = None, server: bool = False,
          client: bool = False, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()):
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if dns or ips:
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def ensure_pki(pki: Path) -> Path:
    """Create the PKI in ``pki`` unless it is complete already; return the directory."""
    wanted = ["ca.crt", "apiserver.crt", "admin.crt", "front-proxy-ca.crt", "front-proxy-client.crt",
              "sa.key", "sa.pub", "metrics-adapter.crt"]
    if all((pki / f).exists() for f in wanted):
        return pki
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    ca_key, ca = _ca("tidegate-testbed-ca")
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca)
    key, cert = _leaf(ca_key, ca, "kube-apiserver", server=True,
                      dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                           "kubernetes.default.svc.cluster.local"),
                      ips=("127.0.0.1", "10.96.0.1"))
    _write_key(pki / "apiserver.key", key)
    _write_cert(pki / "apiserver.crt", cert)
    key, cert = _leaf(ca_key, ca, "admin", org="system:masters", client=True)
    _write_key(pki / "admin.key", key)
    _write_cert(pki / "admin.crt", cert)
    key, cert = _leaf(ca_key, ca, "custom-metrics-apiserver", server=True,
                      dns=("localhost", "custom-metrics-apiserver.custom-metrics.svc"), ips=("127.0.0.1",))
    _write_key(pki / "metrics-adapter.key", key)
    _write_cert(pki / "metrics-adapter.crt", cert)
    fp_key, fp = _ca("tidegate-front-proxy-ca")
    _write_key(pki / "front-proxy-ca.key", fp_key)
    _write_cert(pki / "front-proxy-ca.crt", fp)
    key, cert = _leaf(fp_key, fp, "front-proxy-client", client=True)
    _write_key(pki / "front-proxy-client.key", key)
    _write_cert(pki / "front-proxy-client.crt", cert)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa)
    (pki / "sa.pub").write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def write_kubeconfig(path: Path, pki: Path, server: str, *, user: str = "admin") -> None:
    """A kubeconfig with file references (not inline data) to the admin client certificate."""
    import yaml

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tidegate-testbed",
                      "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki / "admin.crt"),
                                          "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "tidegate-testbed", "context": {"cluster": "tidegate-testbed", "user": user}}],
        "current-context": "tidegate-testbed",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
