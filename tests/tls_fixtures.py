"""A throw-away certificate authority for the TLS tests: a CA, a server certificate for 127.0.0.1 and 127.0.0.2 (a
second loopback address, for a gRPC endpoint bound apart from HTTP) and a client certificate, each as PEM files in
a folder of the test's."""

from __future__ import annotations

import datetime
from pathlib import Path


def make_pki(folder: Path) -> dict[str, Path]:
    """{ca, server_cert, server_key, client_cert, client_key, other_ca}: PEM files under ``folder``. ``other_ca``
    signed nothing here: a client trusting it must not accept the server."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key, cert) -> tuple[Path, Path]:
        kp, cp = folder / f"{stem}.key", folder / f"{stem}.pem"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cp, kp

    def build(subject: str, key, issuer_name, issuer_key, ca: bool, usage=None, san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer_name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    out = {}
    for ca_name in ("ca", "other_ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build(f"trml-edge test {ca_name}", key, name(f"trml-edge test {ca_name}"), key, ca=True)
        out[ca_name], _ = write(ca_name, key, cert)
        if ca_name == "ca":
            ca_key, ca_cert = key, cert
    for who, usage, san in (("server", ExtendedKeyUsageOID.SERVER_AUTH,
                             [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                              x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]),
                            ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build(f"trml-edge test {who}", key, ca_cert.subject, ca_key, ca=False, usage=usage, san=san)
        out[f"{who}_cert"], out[f"{who}_key"] = write(who, key, cert)
    return out
