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

from .cqlserver import CqlServer, gen_certs

pytestmark = pytest.mark.timeout(60)

PASSWORD = "Zq9-s3cr3t-PASSWORD-x7Kv"


def everything_shown(e: BaseException) -> str:
    """The message, repr, attributes and cause chain of an exception."""
    parts = []
    while e is not None:
        parts += [str(e), repr(e), repr(vars(e)) if hasattr(e, "__dict__") else ""]
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return "\n".join(parts)


def test_self_signed_server_is_refused_without_its_certificate(tmp_path: Path) -> None:
    certs = gen_certs(tmp_path)
    with CqlServer(tls_cert=certs["cert"], tls_key=certs["key"]) as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        # No certificate to trust: refused before any connection is made.
        with pytest.raises(errors.TLSConfigError, match="ssl_certificate"):
            cc.open_store(url, use_ssl=True)
        # The system trust store does not vouch for a self-signed server either.
        with pytest.raises(errors.StoreConnectionError, match="127.0.0.1"):
            cc.open_store(
                url,
                use_ssl=True,
                ssl_certificate="/etc/ssl/certs/ca-certificates.crt",
                connect_timeout=2.0,
            ).create_tables("t", "t_metadata", "int")
        trusted = cc.open_store(url, use_ssl=True, ssl_certificate=certs["ca"])
        trusted.create_tables("t", "t_metadata", "int")


def test_ssl_verify_false_warns_loudly_and_connects(tmp_path: Path) -> None:
    certs = gen_certs(tmp_path)
    with CqlServer(tls_cert=certs["cert"], tls_key=certs["key"]) as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        with pytest.warns(errors.InsecureTLSWarning, match="NOT verified") as rec:
            st = cc.open_store(url, use_ssl=True, ssl_verify=False)
        assert f"127.0.0.1:{srv.port}" in str(rec[0].message)
        st.create_tables("t", "t_metadata", "int")
        ids = uuid.uuid4().bytes
        st.put_samples("t", ids, [3], [b"xyz"])
        ds = cc.ShardedDataset(st, "t", [ids], 1)
        assert next(iter(ds)).data.numpy().tobytes() == b"xyz"
        # Without TLS there is nothing to verify, and nothing to warn about.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cc.open_store(url, ssl_verify=False)


def test_password_never_shows() -> None:
    with CqlServer(username="trainer", password=PASSWORD) as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/ks"
        st = cc.open_store(url, username="trainer", password=PASSWORD)
        st.create_tables("t", "t_metadata", "int")
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
        assert PASSWORD not in shown and "127.0.0.1" in shown

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
