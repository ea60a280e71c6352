"""crs4-cqlserver as seen by the DataStax Python driver and cqlsh."""

import os
import shutil
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cqlserver import CqlServer, gen_certs, server_binary  # noqa: E402

cassandra = pytest.importorskip("cassandra")
from cassandra import ReadTimeout  # noqa: E402
from cassandra.auth import PlainTextAuthProvider  # noqa: E402
from cassandra.cluster import Cluster, NoHostAvailable  # noqa: E402
from cassandra.policies import RoundRobinPolicy, TokenAwarePolicy  # noqa: E402
from cassandra.query import SimpleStatement  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.exists(server_binary()), reason="crs4-cqlserver binary not built"
)

KS = (
    "CREATE KEYSPACE IF NOT EXISTS ks "
    "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
)
TABLE = (
    "CREATE TABLE IF NOT EXISTS ks.t (id uuid PRIMARY KEY, label int, data blob) "
    "WITH compression = {'enabled': 'false'}"
)


def connect(srv, **kw):
    kw.setdefault("load_balancing_policy", RoundRobinPolicy())
    kw.setdefault("protocol_version", 4)
    cluster = Cluster([srv.host], port=srv.port, connect_timeout=5, **kw)
    return cluster, cluster.connect()


@pytest.mark.timeout(60)
def test_driver_ddl_insert_select_paging():
    with CqlServer() as srv:
        cluster, s = connect(srv)
        try:
            s.execute(KS)
            s.execute(TABLE)
            ins = s.prepare("INSERT INTO ks.t (id, label, data) VALUES (?, ?, ?)")
            ids = [uuid.uuid4() for _ in range(57)]
            for i, u in enumerate(ids):
                s.execute(ins, (u, i, bytes([i]) * (100 + i)))
            lit = uuid.uuid4()
            s.execute(f"INSERT INTO ks.t (id, label, data) VALUES ({lit}, -1, 0xcafe)")

            sel = s.prepare("SELECT label, data FROM ks.t WHERE id = ?")
            row = s.execute(sel, (ids[5],)).one()
            assert row.label == 5 and row.data == bytes([5]) * 105
            row = s.execute(sel, (lit,)).one()
            assert row.label == -1 and row.data == b"\xca\xfe"
            assert s.execute(sel, (uuid.uuid4(),)).one() is None

            stmt = SimpleStatement("SELECT id, label FROM ks.t", fetch_size=10)
            rows = list(s.execute(stmt))
            assert len(rows) == 58
            assert {r.id for r in rows} == set(ids) | {lit}

            # Prepared paging too.
            pscan = s.prepare("SELECT id FROM ks.t")
            pscan.fetch_size = 9
            assert len({r.id for r in s.execute(pscan)}) == 58

            # Driver schema metadata reflects the table.
            t = cluster.metadata.keyspaces["ks"].tables["t"]
            assert [c.name for c in t.partition_key] == ["id"]
            assert t.columns["data"].cql_type == "blob"
        finally:
            cluster.shutdown()


@pytest.mark.timeout(60)
def test_driver_default_negotiation_downgrades_to_v4():
    with CqlServer() as srv:
        cluster = Cluster([srv.host], port=srv.port, load_balancing_policy=RoundRobinPolicy())
        try:
            s = cluster.connect()
            assert cluster.protocol_version == 4
            assert s.execute("SELECT release_version FROM system.local").one()
        finally:
            cluster.shutdown()


@pytest.mark.timeout(60)
def test_driver_auth():
    with CqlServer(username="bob", password="pw") as srv:
        cluster, s = connect(srv, auth_provider=PlainTextAuthProvider("bob", "pw"))
        s.execute(KS)
        cluster.shutdown()
        with pytest.raises(NoHostAvailable) as e:
            connect(srv, auth_provider=PlainTextAuthProvider("bob", "nope"))
        assert "AuthenticationFailed" in repr(e.value) or "incorrect" in repr(e.value)


@pytest.mark.timeout(60)
def test_driver_tls(tmp_path):
    certs = gen_certs(tmp_path / "certs")
    with CqlServer(tls_cert=certs["cert"], tls_key=certs["key"]) as srv:
        ctx = ssl.create_default_context(cafile=certs["ca"])
        cluster, s = connect(srv, ssl_context=ctx)
        assert s.execute("SELECT key FROM system.local").one().key == "local"
        cluster.shutdown()
        # A different CA does not verify the server.
        other = gen_certs(tmp_path / "other")
        bad = ssl.create_default_context(cafile=other["ca"])
        with pytest.raises(NoHostAvailable):
            connect(srv, ssl_context=bad)


@pytest.mark.timeout(60)
def test_admin_knobs_and_stats():
    with CqlServer() as srv:
        cluster, s = connect(srv)
        try:
            s.execute(KS)
            s.execute(TABLE)
            assert srv.admin("error-rate 1.0 read_timeout") == "OK"
            with pytest.raises(ReadTimeout):
                s.execute("SELECT * FROM ks.t")
            assert s.execute("SELECT key FROM system.local").one()
            assert srv.admin("error-rate 0") == "OK"
            s.execute("SELECT * FROM ks.t")
            stats = srv.stats()
            assert stats["nodes"][0]["injected_errors"] == 1
            assert stats["total_requests"] > 0
            assert srv.admin("bogus").startswith("ERR")
        finally:
            cluster.shutdown()


@pytest.mark.timeout(90)
def test_multi_node_spreads_requests():
    with CqlServer(nodes=3) as srv:
        cluster = Cluster(
            [srv.host],
            port=srv.port,
            protocol_version=4,
            load_balancing_policy=TokenAwarePolicy(RoundRobinPolicy()),
        )
        try:
            s = cluster.connect()
            assert len(cluster.metadata.all_hosts()) == 3
            s.execute(KS)
            s.execute(TABLE)
            ins = s.prepare("INSERT INTO ks.t (id, label) VALUES (?, ?)")
            for i in range(60):
                s.execute(ins, (uuid.uuid4(), i))
            srv.admin("reset-stats")
            sel = s.prepare("SELECT label FROM ks.t WHERE id = ?")
            for _ in range(60):
                s.execute(sel, (uuid.uuid4(),))
            counts = [n["executes"] for n in srv.stats()["nodes"]]
            assert all(c > 0 for c in counts), counts
        finally:
            cluster.shutdown()


@pytest.mark.timeout(60)
def test_data_file_survives_restart(tmp_path):
    data = tmp_path / "cql.dat"
    with CqlServer(data_file=data) as srv:
        cluster, s = connect(srv)
        s.execute(KS)
        s.execute(TABLE)
        u = uuid.uuid4()
        s.execute("INSERT INTO ks.t (id, label, data) VALUES (%s, %s, %s)", (u, 9, b"x" * 1000))
        cluster.shutdown()
    assert data.exists()
    with CqlServer(data_file=data) as srv:
        cluster, s = connect(srv)
        row = s.execute("SELECT label, data FROM ks.t WHERE id = %s", (u,)).one()
        assert row.label == 9 and row.data == b"x" * 1000
        cluster.shutdown()


def _cqlsh():
    exe = Path(sys.executable).parent / "cqlsh"
    if exe.exists():
        return str(exe)
    return shutil.which("cqlsh")


@pytest.mark.timeout(90)
def test_cqlsh_create_insert_select():
    exe = _cqlsh()
    if exe is None:
        pytest.skip("cqlsh not installed")
    env = dict(os.environ)
    env.pop("CQLSH_NO_BUNDLED", None)
    env["HOME"] = os.environ.get("TMPDIR", "/tmp")
    with CqlServer() as srv:
        script = (
            "CREATE KEYSPACE IF NOT EXISTS shk WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}; "
            "CREATE TABLE IF NOT EXISTS shk.t (id int PRIMARY KEY, name text, payload blob); "
            "INSERT INTO shk.t (id, name, payload) VALUES (42, 'hello cqlsh', 0xbeef); "
            "SELECT * FROM shk.t;"
        )
        out = subprocess.run(
            [exe, srv.host, str(srv.port), "--protocol-version=4", "-e", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        assert "hello cqlsh" in out.stdout
        assert "0xbeef" in out.stdout
        assert "(1 rows)" in out.stdout
