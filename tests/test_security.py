"""TLS verifies the server unless turned off loudly; a password never shows in
reprs, errors (wrong credentials, unreachable host) or a pickled store's repr."""

from __future__ import annotations

import pickle
import socket
import uuid
import warnings
from pathlib import Path

import pytest

import crs4_cassandra as cc
from crs4_cassandra import errors
from testbed import Cluster, Toxiproxy

from .conftest import Secure, tls_options

pytestmark = pytest.mark.timeout(60)

PASSWORD = "Zq9-s3cr3t-PASSWORD-x7Kv"


def everything_shown(e: BaseException) -> str:
    """The message, repr, attributes and cause chain of an exception."""
    parts = []
    while e is not None:
        parts += [str(e), repr(e), repr(vars(e)) if hasattr(e, "__dict__") else ""]
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return "\n".join(parts)


def test_self_signed_server_is_refused_without_its_certificate(secure: Secure) -> None:
    secure.role("sec_user", PASSWORD)
    url = secure.url("sec_ks")
    creds = {"username": "sec_user", "password": PASSWORD}
    # No certificate to trust: refused before any connection is made.
    with pytest.raises(errors.TLSConfigError, match="ssl_certificate"):
        cc.open_store(url, use_ssl=True, **creds)
    # The system trust store does not vouch for a self-signed server either.
    with pytest.raises(errors.StoreConnectionError, match="127.0.1.1"):
        cc.open_store(
            url,
            use_ssl=True,
            ssl_certificate="/etc/ssl/certs/ca-certificates.crt",
            connect_timeout=2.0,
            **creds,
        ).create_tables("t", "t_metadata", "int")
    trusted = cc.open_store(url, use_ssl=True, ssl_certificate=secure.certs["ca"], **creds)
    trusted.create_tables("t", "t_metadata", "int", overwrite=True)


def test_ssl_verify_false_warns_loudly_and_connects(secure: Secure) -> None:
    secure.role("sec_user", PASSWORD)
    url = secure.url("sec_ks2")
    creds = {"username": "sec_user", "password": PASSWORD}
    with pytest.warns(errors.InsecureTLSWarning, match="NOT verified") as rec:
        st = cc.open_store(url, use_ssl=True, ssl_verify=False, **creds)
    assert secure.host in str(rec[0].message)
    st.create_tables("t", "t_metadata", "int", overwrite=True)
    ids = uuid.uuid4().bytes
    st.put_samples("t", ids, [3], [b"xyz"])
    ds = cc.ShardedDataset(st, "t", [ids], 1)
    assert next(iter(ds)).data.numpy().tobytes() == b"xyz"
    # Without TLS there is nothing to verify, and nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc.open_store(url, ssl_verify=False, **creds)


@pytest.mark.slow
def test_mutual_tls_with_required_client_certificates(
    secure: Secure, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    certs = secure.certs
    tls = tls_options(
        certs,
        require_client_auth=True,
        truststore=certs["truststore"],
        truststore_password=certs["password"],
    )
    with Cluster(1, name="mtls", tls=tls, toxiproxy=toxiproxy, heap="512m") as cl:
        url = cl.url("mtls_ks")
        mutual = cc.open_store(
            url,
            use_ssl=True,
            ssl_certificate=certs["ca"],
            ssl_own_certificate=certs["client_cert"],
            ssl_own_key=certs["client_key"],
        )
        mutual.create_tables("t", "t_metadata", "int")
        ids = uuid.uuid4().bytes
        mutual.put_samples("t", ids, [7], [b"mtls"])
        b = next(iter(cc.ShardedDataset(mutual, "t", [ids], 1)))
        assert b.data.numpy().tobytes() == b"mtls" and int(b.labels[0]) == 7
        # The same server without a client certificate: the handshake is refused.
        anonymous = cc.open_store(
            url, use_ssl=True, ssl_certificate=certs["ca"], connect_timeout=2.0
        )
        with pytest.raises(errors.StoreConnectionError, match="127.0.1.1"):
            anonymous.check_table("t", "int")
        with pytest.raises(errors.TLSConfigError, match="ssl_own_key"):
            cc.open_store(
                url,
                use_ssl=True,
                ssl_certificate=certs["ca"],
                ssl_own_certificate=certs["client_cert"],
            )


def test_password_never_shows(secure: Secure) -> None:
    secure.role("trainer", PASSWORD)
    url = secure.url("pw_ks")
    st = cc.open_store(url, username="trainer", password=PASSWORD)
    st.create_tables("t", "t_metadata", "int", overwrite=True)
    assert PASSWORD not in repr(st) and PASSWORD not in str(st)
    ds = cc.ShardedDataset(st, "t", [], 1)
    assert PASSWORD not in repr(ds.store)
    # A store pickled for a spawned DataLoader worker, reopened and shown.
    again = pickle.loads(pickle.dumps(st))
    assert PASSWORD not in repr(again)
    again.check_table("t", "int")  # and it still authenticates

    wrong_pw = PASSWORD + "-wrong"
    wrong = cc.open_store(url, username="trainer", password=wrong_pw, connect_timeout=2.0)
    with pytest.raises(errors.AuthenticationError) as ei:
        wrong.check_table("t", "int")
    shown = everything_shown(ei.value)
    assert PASSWORD not in shown and "127.0.1.1" in shown
    # An unreachable host: nothing listens on this port any more.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = cc.open_store(
        f"cassandra://127.0.0.1:{port}/ks",
        username="trainer",
        password=PASSWORD,
        connect_timeout=1.0,
    )
    assert PASSWORD not in repr(gone) and PASSWORD not in repr(pickle.loads(pickle.dumps(gone)))
    with pytest.raises(errors.StoreConnectionError) as ei2:
        gone.check_table("t", "int")
    shown = everything_shown(ei2.value)
    assert PASSWORD not in shown and f"127.0.0.1:{port}" in shown
    # A malformed password option is refused without echoing it.
    with pytest.raises(errors.InvalidArgumentError) as ei3:
        cc.open_store(url, password=12345678987654321)
    assert "12345678987654321" not in everything_shown(ei3.value)


def test_missing_credentials_name_the_options_to_pass(
    secure: Secure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRS4_CASSANDRA_PASSWORD", raising=False)
    url = secure.url("nocred_ks")
    with pytest.raises(errors.AuthenticationError) as ei:
        cc.open_store(url, connect_timeout=2.0).check_table("t", "int")
    message = str(ei.value)
    for option in ("username=", "password=", "CRS4_CASSANDRA_PASSWORD", "password_env="):
        assert option in message, message
    assert "127.0.1.1" in message
    # Nothing shown speaks of the Rust driver's API.
    assert "SessionBuilder" not in everything_shown(ei.value)
    # A username without a password: the server's refusal, and what is missing.
    secure.role("trainer", PASSWORD)
    with pytest.raises(errors.AuthenticationError) as ei2:
        cc.open_store(url, username="trainer", connect_timeout=2.0).check_table("t", "int")
    message = str(ei2.value)
    assert "no password" in message and "password=" in message, message
    assert "SessionBuilder" not in everything_shown(ei2.value)
