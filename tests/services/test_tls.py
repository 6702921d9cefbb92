"""gRPC over TLS and mutual TLS, and the auth token's start-up checks: a real server on 127.0.0.1 with
certificates made here (the `cryptography` package), real handshakes, and `vigil` in subprocesses."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from services.client import Client, is_local
from services.config import Settings, TlsSettings

VIGIL = shutil.which("vigil", path=os.path.dirname(sys.executable)) or shutil.which("vigil")
TOKEN = "tls-test-token-0123456789abcdef"
RPC_TIMEOUT_S = 30  # a safety net only: refused handshakes fail at once


# ---- certificates ----------------------------------------------------------------------------------------
@dataclass
class Pair:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(d: Path, stem: str, cert: x509.Certificate, key) -> Pair:
    pair = Pair(d / f"{stem}.crt", d / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pair


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))


class Authority:
    """A CA that signs server and client certificates into a folder."""

    def __init__(self, d: Path, name: str) -> None:
        self.dir, self.name = d, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (_builder(name, _name(name), self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = d / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, usage, sans: list[x509.GeneralName] | None = None) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (_builder(stem, self.cert.subject, key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.dir, f"{self.name}-{stem}", b.sign(self.key, hashes.SHA256()), key)

    def server(self) -> Pair:
        return self.issue("server", ExtendedKeyUsageOID.SERVER_AUTH,
                          [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])

    def client(self) -> Pair:
        return self.issue("client", ExtendedKeyUsageOID.CLIENT_AUTH)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = Authority(d, "vigil-test-ca"), Authority(d, "other-ca")
    return {"ca": ca, "other": other, "server": ca.server(), "client": ca.client(), "stranger": other.client()}


def _tls(pki, mutual: bool = False) -> dict:
    s = pki["server"]
    return {"cert_file": s.cert, "key_file": s.key, **({"client_ca_file": pki["ca"].pem} if mutual else {})}


def _health(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S).status


def _refused(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


# ---- TLS -------------------------------------------------------------------------------------------------
def test_tls_server_accepts_a_client_that_trusts_its_ca_and_refuses_the_rest(make_server, pki):
    _, addr = make_server(tls=_tls(pki))
    with Client(addr, tls_ca=pki["ca"].pem) as c:
        assert _health(c.channel) == health_pb2.HealthCheckResponse.SERVING
        assert c.list() == []
    # the name checked is the address's host (127.0.0.1, an IP SAN) or an override (a DNS SAN)
    with Client(addr, tls_ca=pki["ca"].pem.read_bytes(), server_name="localhost") as c:
        assert c.list() == []
    with Client(addr) as plain:  # plaintext to a TLS port: no handshake, no call
        assert _refused(plain.list) == grpc.StatusCode.UNAVAILABLE
        assert _refused(lambda: _health(plain.channel)) == grpc.StatusCode.UNAVAILABLE
    with Client(addr, tls_ca=pki["other"].pem) as wrong_ca:
        assert _refused(wrong_ca.list) == grpc.StatusCode.UNAVAILABLE
    with Client(addr, tls_ca=pki["ca"].pem, server_name="not-in-the-cert.example") as wrong_name:
        assert _refused(wrong_name.list) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(make_server, pki):
    _, addr = make_server(tls=_tls(pki, mutual=True))
    with Client(addr, tls_ca=pki["ca"].pem) as anonymous:
        assert _refused(anonymous.list) == grpc.StatusCode.UNAVAILABLE
        assert _refused(lambda: _health(anonymous.channel)) == grpc.StatusCode.UNAVAILABLE  # health too
    stranger = pki["stranger"]  # a certificate, but from a CA the server does not trust for clients
    with Client(addr, tls_ca=pki["ca"].pem, tls_cert=stranger.cert, tls_key=stranger.key) as c:
        assert _refused(c.list) == grpc.StatusCode.UNAVAILABLE
    me = pki["client"]
    with Client(addr, tls_ca=pki["ca"].pem, tls_cert=me.cert, tls_key=me.key) as c:
        assert _health(c.channel) == health_pb2.HealthCheckResponse.SERVING
        assert c.list() == []


def test_token_and_tls_together(make_server, pki):
    _, addr = make_server(tls=_tls(pki), auth_token=TOKEN)
    with Client(addr, tls_ca=pki["ca"].pem) as anon:
        assert _health(anon.channel) == health_pb2.HealthCheckResponse.SERVING  # health stays open
        assert _refused(anon.list) == grpc.StatusCode.UNAUTHENTICATED
    with Client(addr, token=TOKEN + "x", tls_ca=pki["ca"].pem) as bad:
        assert _refused(bad.list) == grpc.StatusCode.UNAUTHENTICATED
    with Client(addr, token=TOKEN, tls_ca=pki["ca"].pem) as ok:
        assert ok.list() == []
    with Client(addr, token=TOKEN) as plaintext:  # the right token, but not over TLS
        assert _refused(plaintext.list) == grpc.StatusCode.UNAVAILABLE


def test_client_needs_cert_and_key_together(pki):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        Client("127.0.0.1:1", tls_ca=pki["ca"].pem, tls_cert=pki["client"].cert)


# ---- settings --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["", "   ", "\n"])
def test_empty_token_is_a_settings_error(token):
    with pytest.raises(ValidationError, match="VIGIL_AUTH_TOKEN is set but empty"):
        Settings(auth_token=token)


def test_token_with_stray_whitespace_is_refused_without_echoing_it():
    secret = "do-not-print-this-token-value"
    with pytest.raises(ValidationError, match="leading or trailing whitespace") as err:
        Settings(auth_token=secret + "\n")
    assert secret not in str(err.value)  # what a traceback or a log would show
    assert secret not in repr(err.value.errors(include_input=False))  # what `vigil serve` prints


def test_unset_token_means_no_auth_and_a_set_one_is_kept():
    assert Settings().auth_token is None
    assert Settings(auth_token=TOKEN).auth_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(Settings(auth_token=TOKEN))


def test_tls_settings_from_the_environment(pki, monkeypatch):
    s = pki["server"]
    for name in ("CERT_FILE", "KEY_FILE", "CLIENT_CA_FILE"):
        monkeypatch.delenv(f"VIGIL_TLS__{name}", raising=False)
    assert not Settings().tls.enabled  # unset: plaintext, as before
    monkeypatch.setenv("VIGIL_TLS__CERT_FILE", str(s.cert))
    monkeypatch.setenv("VIGIL_TLS__KEY_FILE", str(s.key))
    monkeypatch.setenv("VIGIL_TLS__CLIENT_CA_FILE", str(pki["ca"].pem))
    tls = Settings().tls
    assert tls.enabled and (tls.cert_file, tls.key_file, tls.client_ca_file) == (s.cert, s.key, pki["ca"].pem)


def test_tls_settings_are_checked_at_start(pki, tmp_path):
    s = pki["server"]
    with pytest.raises(ValidationError, match="no such file"):
        TlsSettings(cert_file=tmp_path / "missing.crt", key_file=s.key)
    with pytest.raises(ValidationError, match="both VIGIL_TLS__CERT_FILE and VIGIL_TLS__KEY_FILE"):
        TlsSettings(cert_file=s.cert)
    with pytest.raises(ValidationError, match="mutual TLS"):
        TlsSettings(client_ca_file=pki["ca"].pem)
    garbage = tmp_path / "not-pem.crt"
    garbage.write_bytes(b"hello")
    with pytest.raises(ValidationError, match="not a PEM file"):
        TlsSettings(cert_file=garbage, key_file=s.key)
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.key"
        unreadable.write_bytes(s.key.read_bytes())
        unreadable.chmod(0)
        with pytest.raises(ValidationError, match="cannot be read"):
            TlsSettings(cert_file=s.cert, key_file=unreadable)
    key_text = s.key.read_text()
    with pytest.raises(ValidationError) as err:  # the key's contents never appear in an error
        TlsSettings(cert_file=s.key, key_file=tmp_path / "missing.key")
    assert "PRIVATE KEY" not in str(err.value) and key_text not in str(err.value)


@pytest.mark.parametrize("address, local", [
    ("127.0.0.1:50051", True), ("localhost:50051", True), ("[::1]:50051", True), ("unix:/tmp/v.sock", True),
    ("dns:///localhost:50051", True), ("127.8.9.10:1", True),
    ("10.0.0.5:50051", False), ("vigil.example.com:443", False), ("[2001:db8::1]:50051", False),
    ("dns:///vigil.example.com:443", False), ("0.0.0.0:50051", False),
])
def test_is_local(address, local):
    assert is_local(address) is local


# ---- the command line ------------------------------------------------------------------------------------
def _env(cache_dir, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir / "vigil"), VIGIL_HTTP_PORT="0")  # no fixed 8080 in tests
    env.update(extra)
    return env


def _vigil(args, env, timeout=300):
    import subprocess

    assert VIGIL, "the `vigil` console script is not installed (pip install -e .)"
    return subprocess.run([VIGIL, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("extra, variable, words", [
    ({"VIGIL_AUTH_TOKEN": ""}, "VIGIL_AUTH_TOKEN", "set but empty"),
    ({"VIGIL_AUTH_TOKEN": "  "}, "VIGIL_AUTH_TOKEN", "set but empty"),
    ({"VIGIL_TLS__CERT_FILE": "/nonexistent/server.crt", "VIGIL_TLS__KEY_FILE": "/nonexistent/server.key"},
     "VIGIL_TLS__CERT_FILE", "no such file"),
], ids=["empty-token", "blank-token", "missing-cert"])
def test_serve_refuses_bad_security_settings_with_one_line(cache_dir, extra, variable, words):
    proc = _vigil(["serve", "--port", "0"], _env(cache_dir, VIGIL_REDIS_URL="redis://127.0.0.1:1/0", **extra))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines[0].startswith("error: ") and variable in lines[0] \
        and words in lines[0], proc.stderr
    if "VIGIL_TLS__CERT_FILE" in extra:  # both files are named, each on its own line
        assert len(lines) == 2 and lines[1].startswith("error: VIGIL_TLS__KEY_FILE: "), proc.stderr
    else:
        assert len(lines) == 1, proc.stderr


def test_cli_over_mutual_tls_with_a_token(make_server, pki, cache_dir):
    _, addr = make_server(tls=_tls(pki, mutual=True), auth_token=TOKEN)
    me = pki["client"]
    flags = ["--server", addr, "--tls-ca", str(pki["ca"].pem), "--tls-cert", str(me.cert), "--tls-key", str(me.key)]
    ok = _vigil(["streams", "--json", *flags], _env(cache_dir, VIGIL_AUTH_TOKEN=TOKEN))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [] and "warning" not in ok.stderr
    # the same through the environment
    by_env = _vigil(["streams", "--json", "--server", addr],
                    _env(cache_dir, VIGIL_AUTH_TOKEN=TOKEN, VIGIL_TLS_CA=str(pki["ca"].pem),
                         VIGIL_TLS_CERT=str(me.cert), VIGIL_TLS_KEY=str(me.key)))
    assert by_env.returncode == 0 and json.loads(by_env.stdout) == [], by_env.stderr
    no_token = _vigil(["streams", *flags], _env(cache_dir))
    assert no_token.returncode == 2 and "UNAUTHENTICATED" in no_token.stderr, no_token.stderr
    no_cert = _vigil(["streams", "--server", addr, "--tls-ca", str(pki["ca"].pem)],
                     _env(cache_dir, VIGIL_AUTH_TOKEN=TOKEN))
    assert no_cert.returncode == 2 and "UNAVAILABLE" in no_cert.stderr, no_cert.stderr
    half = _vigil(["streams", "--server", addr, "--tls-cert", str(me.cert)], _env(cache_dir))
    assert half.returncode == 2 and "--tls-cert and --tls-key" in half.stderr, half.stderr
