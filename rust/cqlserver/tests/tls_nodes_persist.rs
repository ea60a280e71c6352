//! TLS, several nodes, the admin port and the data file.

use std::sync::Arc;
use std::time::Duration;

use crs4_cqlserver::{certs, Server};
use scylla::client::session_builder::SessionBuilder;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(10);

/// Handshakes with the given CA, sends OPTIONS and returns the reply opcode.
async fn tls_options(port: u16, ca_pem: &str) -> Result<u8, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(&[0x04, 0, 0, 1, 0x05, 0, 0, 0, 0])
        .await
        .map_err(|e| e.to_string())?;
    let mut hdr = [0u8; 9];
    tls.read_exact(&mut hdr).await.map_err(|e| e.to_string())?;
    Ok(hdr[4])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_right_and_wrong_ca() {
    tokio::time::timeout(LIMIT, async {
        let c = certs::generate().unwrap();
        let other = certs::generate().unwrap();
        let h = Server::builder()
            .tls_pem(&c.server_cert_pem, &c.server_key_pem)
            .start()
            .await
            .unwrap();
        assert_eq!(tls_options(h.port(), &c.ca_cert_pem).await, Ok(0x06));
        assert!(tls_options(h.port(), &other.ca_cert_pem).await.is_err());
        // Plain-text clients get nothing useful either.
        let plain = tokio::time::timeout(
            Duration::from_secs(3),
            SessionBuilder::new().known_node_addr(h.addrs()[0]).build(),
        )
        .await;
        assert!(!matches!(plain, Ok(Ok(_))));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_data_and_split_tokens() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder().nodes(3).start().await.unwrap();
        let s = SessionBuilder::new()
            .known_node_addr(h.addrs()[0])
            .build()
            .await
            .unwrap();
        let state = s.get_cluster_state();
        assert_eq!(state.get_nodes_info().len(), 3);
        s.query_unpaged(
            "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await
        .unwrap();
        s.query_unpaged("CREATE TABLE ks.t (id uuid PRIMARY KEY, v int)", &[])
            .await
            .unwrap();
        let ins = s
            .prepare("INSERT INTO ks.t (id, v) VALUES (?, ?)")
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..60 {
            let id = Uuid::new_v4();
            s.execute_unpaged(&ins, (id, i)).await.unwrap();
            ids.push(id);
        }
        let before: Vec<u64> = (0..3).map(|i| h.requests(i)).collect();
        let sel = s.prepare("SELECT v FROM ks.t WHERE id = ?").await.unwrap();
        for id in &ids {
            let r = s.execute_unpaged(&sel, (id,)).await.unwrap();
            assert_eq!(r.into_rows_result().unwrap().rows_num(), 1);
        }
        let served: Vec<u64> = (0..3).map(|i| h.requests(i) - before[i]).collect();
        assert!(served.iter().all(|n| *n > 0), "{served:?}");
        assert!(h.stats_json().contains("127.0.0.3"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_and_data_file() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let id = Uuid::new_v4();
        {
            let h = Server::builder()
                .data_file(&path)
                .admin_port(0)
                .start()
                .await
                .unwrap();
            let s = SessionBuilder::new()
                .known_node_addr(h.addrs()[0])
                .build()
                .await
                .unwrap();
            s.query_unpaged(
                "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
                &[],
            )
            .await
            .unwrap();
            s.query_unpaged("CREATE TABLE ks.t (id uuid, v text, b blob, PRIMARY KEY (id))", &[])
                .await
                .unwrap();
            s.query_unpaged(
                "INSERT INTO ks.t (id, v, b) VALUES (?, ?, ?)",
                (id, "kept", vec![7u8; 3000]),
            )
            .await
            .unwrap();

            let admin = TcpStream::connect(("127.0.0.1", h.admin_port().unwrap()))
                .await
                .unwrap();
            let (rd, mut wr) = admin.into_split();
            let mut lines = BufReader::new(rd).lines();
            for (cmd, want) in [
                ("ping", "OK"),
                ("delay 5", "OK"),
                ("error-kind unavailable", "OK"),
                ("save", "OK"),
            ] {
                wr.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
                assert_eq!(lines.next_line().await.unwrap().unwrap(), want, "{cmd}");
            }
            wr.write_all(b"stats\n").await.unwrap();
            let stats = lines.next_line().await.unwrap().unwrap();
            assert!(stats.contains("\"delay_ms\":5"), "{stats}");
            assert!(stats.contains("\"error_kind\":\"unavailable\""), "{stats}");
        }
        let h = Server::builder().data_file(&path).start().await.unwrap();
        let s = SessionBuilder::new()
            .known_node_addr(h.addrs()[0])
            .build()
            .await
            .unwrap();
        let r = s
            .query_unpaged("SELECT v, b FROM ks.t WHERE id = ?", (id,))
            .await
            .unwrap();
        let (v, b): (String, Vec<u8>) = r.into_rows_result().unwrap().single_row().unwrap();
        assert_eq!(v, "kept");
        assert_eq!(b, vec![7u8; 3000]);
    })
    .await
    .expect("test timed out");
}
