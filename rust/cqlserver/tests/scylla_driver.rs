//! The server as seen by the scylla Rust driver.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crs4_cqlserver::{ErrorKind, Server, ServerHandle};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Statement;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(10);

async fn session(h: &ServerHandle) -> Session {
    SessionBuilder::new()
        .known_node_addr(h.addrs()[0])
        .build()
        .await
        .expect("connect")
}

async fn create_schema(s: &Session) {
    s.query_unpaged(
        "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        &[],
    )
    .await
    .unwrap();
    s.query_unpaged(
        "CREATE TABLE IF NOT EXISTS ks.t (id uuid PRIMARY KEY, label int, data blob) WITH compression = {'enabled': 'false'}",
        &[],
    )
    .await
    .unwrap();
}

async fn insert_rows(s: &Session, n: usize) -> Vec<Uuid> {
    let ins = s
        .prepare("INSERT INTO ks.t (id, label, data) VALUES (?, ?, ?)")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Uuid::new_v4();
        let data = vec![i as u8; 1000 + i];
        s.execute_unpaged(&ins, (id, i as i32, data)).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_insert_select_paging_tokens() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder().start().await.unwrap();
        let s = session(&h).await;
        create_schema(&s).await;
        let ids = insert_rows(&s, 100).await;

        // Prepared point select.
        let sel = s
            .prepare("SELECT label, data FROM ks.t WHERE id = ?")
            .await
            .unwrap();
        for (i, id) in ids.iter().enumerate().step_by(7) {
            let rows = s.execute_unpaged(&sel, (id,)).await.unwrap();
            let (label, data): (i32, Vec<u8>) =
                rows.into_rows_result().unwrap().single_row().unwrap();
            assert_eq!(label, i as i32);
            assert_eq!(data, vec![i as u8; 1000 + i]);
        }

        // Missing key: no rows.
        let rows = s.execute_unpaged(&sel, (Uuid::new_v4(),)).await.unwrap();
        assert_eq!(rows.into_rows_result().unwrap().rows_num(), 0);

        // Paging with a page smaller than the row count.
        let mut scan = s.prepare("SELECT id, label FROM ks.t").await.unwrap();
        scan.set_page_size(7);
        let got: Vec<(Uuid, i32)> = s
            .execute_iter(scan, ())
            .await
            .unwrap()
            .rows_stream::<(Uuid, i32)>()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.len(), 100);
        let uniq: HashSet<Uuid> = got.iter().map(|r| r.0).collect();
        assert_eq!(uniq, ids.iter().copied().collect());

        // A single page carries a paging state.
        let mut one = Statement::new("SELECT id FROM ks.t");
        one.set_page_size(10);
        let (res, state) = s
            .query_single_page(one, (), scylla::response::PagingState::start())
            .await
            .unwrap();
        assert_eq!(res.into_rows_result().unwrap().rows_num(), 10);
        assert!(matches!(
            state,
            scylla::response::PagingStateResponse::HasMorePages { .. }
        ));

        // Token ranges cover every row exactly once, and our token() agrees
        // with the driver's own token computation.
        let tok_sel = s
            .prepare("SELECT id, token(id) FROM ks.t WHERE token(id) > ? AND token(id) <= ?")
            .await
            .unwrap();
        let bounds = [i64::MIN, -(1 << 62), 0, 1 << 62, i64::MAX];
        let mut seen = HashSet::new();
        for w in bounds.windows(2) {
            let rows = s.execute_unpaged(&tok_sel, (w[0], w[1])).await.unwrap();
            let rows = rows.into_rows_result().unwrap();
            for r in rows.rows::<(Uuid, i64)>().unwrap() {
                let (id, tok) = r.unwrap();
                assert!(tok > w[0] && tok <= w[1]);
                let driver_tok = sel.calculate_token(&(id,)).unwrap().unwrap();
                assert_eq!(driver_tok.value(), tok);
                assert!(seen.insert(id));
            }
        }
        assert_eq!(seen.len(), 100);

        // Literal insert and IN.
        let lit = Uuid::new_v4();
        s.query_unpaged(
            format!("INSERT INTO ks.t (id, label, data) VALUES ({lit}, -5, 0xcafe)"),
            &[],
        )
        .await
        .unwrap();
        let rows = s
            .query_unpaged(
                format!(
                    "SELECT label, data FROM ks.t WHERE id IN ({lit}, {})",
                    ids[0]
                ),
                &[],
            )
            .await
            .unwrap();
        let rows = rows.into_rows_result().unwrap();
        let mut labels: Vec<i32> = rows
            .rows::<(i32, Vec<u8>)>()
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        labels.sort();
        assert_eq!(labels, vec![-5, 0]);

        // count(*) and LIMIT.
        let rows = s
            .query_unpaged("SELECT count(*) FROM ks.t", &[])
            .await
            .unwrap();
        let (n,): (i64,) = rows.into_rows_result().unwrap().single_row().unwrap();
        assert_eq!(n, 101);
        let rows = s
            .query_unpaged("SELECT id FROM ks.t LIMIT 3", &[])
            .await
            .unwrap();
        assert_eq!(rows.into_rows_result().unwrap().rows_num(), 3);

        // Driver metadata sees the table.
        s.refresh_metadata().await.unwrap();
        let state = s.get_cluster_state();
        let ks = state.get_keyspace("ks").expect("keyspace metadata");
        assert!(ks.tables.contains_key("t"));

        // Batch of prepared and literal inserts.
        let ins = s
            .prepare("INSERT INTO ks.t (id, label) VALUES (?, ?)")
            .await
            .unwrap();
        let mut batch = scylla::statement::batch::Batch::default();
        batch.append_statement(ins);
        batch.append_statement(
            format!(
                "INSERT INTO ks.t (id, label) VALUES ({}, 1)",
                Uuid::new_v4()
            )
            .as_str(),
        );
        s.batch(&batch, ((Uuid::new_v4(), 2i32), ())).await.unwrap();
        let rows = s
            .query_unpaged("SELECT count(*) FROM ks.t", &[])
            .await
            .unwrap();
        let (n,): (i64,) = rows.into_rows_result().unwrap().single_row().unwrap();
        assert_eq!(n, 103);

        // Errors: unknown table is Invalid, bad syntax is SyntaxError.
        let e = s
            .query_unpaged("SELECT * FROM ks.nope", &[])
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("Invalid"), "{e:?}");
        let e = s.query_unpaged("SELEKT 1", &[]).await.unwrap_err();
        assert!(format!("{e:?}").contains("SyntaxError"), "{e:?}");

        // DROP and TRUNCATE.
        s.query_unpaged("TRUNCATE ks.t", &[]).await.unwrap();
        let rows = s
            .query_unpaged("SELECT count(*) FROM ks.t", &[])
            .await
            .unwrap();
        let (n,): (i64,) = rows.into_rows_result().unwrap().single_row().unwrap();
        assert_eq!(n, 0);
        s.query_unpaged("DROP TABLE ks.t", &[]).await.unwrap();
        s.query_unpaged("DROP KEYSPACE IF EXISTS ks", &[])
            .await
            .unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder()
            .credentials("alice", "s3cret")
            .start()
            .await
            .unwrap();
        let ok = SessionBuilder::new()
            .known_node_addr(h.addrs()[0])
            .user("alice", "s3cret")
            .build()
            .await;
        assert!(ok.is_ok(), "{:?}", ok.err());
        let bad = SessionBuilder::new()
            .known_node_addr(h.addrs()[0])
            .user("alice", "wrong")
            .build()
            .await;
        let Err(e) = bad else {
            panic!("wrong password must fail")
        };
        assert!(
            format!("{e:?}").contains("AuthenticationError") || format!("{e}").contains("password"),
            "{e:?}"
        );
        let none = SessionBuilder::new()
            .known_node_addr(h.addrs()[0])
            .build()
            .await;
        assert!(none.is_err());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_spare_system_tables() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder()
            .error_rate(1.0)
            .error_kind(ErrorKind::ReadTimeout)
            .start()
            .await
            .unwrap();
        let s = session(&h).await;
        create_schema(&s).await;
        let e = s
            .query_unpaged("SELECT * FROM ks.t", &[])
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("ReadTimeout"), "{e:?}");

        h.knobs().set_error_kind(ErrorKind::Overloaded);
        let e = s
            .query_unpaged("SELECT * FROM ks.t", &[])
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("Overloaded"), "{e:?}");

        h.knobs().set_error_kind(ErrorKind::Unavailable);
        let e = s
            .query_unpaged("SELECT * FROM ks.t", &[])
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("Unavailable"), "{e:?}");

        // System tables are never failed.
        s.query_unpaged("SELECT * FROM system.local", &[])
            .await
            .unwrap();
        h.knobs().set_error_rate(0.0);
        s.query_unpaged("SELECT * FROM ks.t", &[]).await.unwrap();
        assert!(h.stats_json().contains("\"injected_errors\":3"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_is_per_request_and_concurrent() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder().start().await.unwrap();
        let s = session(&h).await;
        create_schema(&s).await;
        let ids = insert_rows(&s, 4).await;
        let sel = s
            .prepare("SELECT data FROM ks.t WHERE id = ?")
            .await
            .unwrap();
        h.knobs().set_delay_ms(300);

        let t = Instant::now();
        s.execute_unpaged(&sel, (ids[0],)).await.unwrap();
        let one = t.elapsed();
        assert!(one >= Duration::from_millis(300), "{one:?}");

        // Twenty concurrent requests overlap: far less than 20 x 300 ms.
        let t = Instant::now();
        let futs = (0..20).map(|i| s.execute_unpaged(&sel, (ids[i % 4],)));
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
        let many = t.elapsed();
        assert!(many >= Duration::from_millis(300), "{many:?}");
        assert!(many < Duration::from_millis(1500), "{many:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_reconnect() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder().start().await.unwrap();
        let s = session(&h).await;
        create_schema(&s).await;
        h.drop_connections();
        // The driver reconnects; retry until a query goes through.
        let mut ok = false;
        for _ in 0..50 {
            if s.query_unpaged("SELECT * FROM ks.t", &[]).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok);
        assert!(h.stats_json().contains("\"connections\":"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprepared_after_restart_is_reprepared() {
    tokio::time::timeout(LIMIT, async {
        let h = Server::builder().start().await.unwrap();
        let s = session(&h).await;
        create_schema(&s).await;
        let ids = insert_rows(&s, 2).await;
        let sel = s
            .prepare("SELECT label FROM ks.t WHERE id = ?")
            .await
            .unwrap();
        // Forget prepared statements: the driver gets UNPREPARED, re-prepares
        // and retries transparently.
        h.shared().prepared.write().unwrap().clear();
        let rows = s.execute_unpaged(&sel, (ids[1],)).await.unwrap();
        let (label,): (i32,) = rows.into_rows_result().unwrap().single_row().unwrap();
        assert_eq!(label, 1);
    })
    .await
    .expect("test timed out");
}

/// Throughput of prepared point selects of ~110 KB blobs; run with
/// `cargo test --release -p crs4-cqlserver -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn throughput_point_selects() {
    let h = Server::builder().start().await.unwrap();
    let s = std::sync::Arc::new(session(&h).await);
    create_schema(&s).await;
    let ins = s
        .prepare("INSERT INTO ks.t (id, label, data) VALUES (?, ?, ?)")
        .await
        .unwrap();
    let ids: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        s.execute_unpaged(&ins, (id, i as i32, vec![i as u8; 110_000]))
            .await
            .unwrap();
    }
    let sel = s
        .prepare("SELECT label, data FROM ks.t WHERE id = ?")
        .await
        .unwrap();
    let ids = std::sync::Arc::new(ids);
    let t = Instant::now();
    let secs = Duration::from_secs(3);
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let (s, sel, ids) = (s.clone(), sel.clone(), ids.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut i = w;
                while t.elapsed() < secs {
                    let r = s
                        .execute_unpaged(&sel, (ids[i % ids.len()],))
                        .await
                        .unwrap();
                    let (_, d): (i32, Vec<u8>) =
                        r.into_rows_result().unwrap().single_row().unwrap();
                    assert_eq!(d.len(), 110_000);
                    n += 1;
                    i += 7;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "{total} selects in {el:.2}s: {:.0}/s, {:.0} MB/s",
        total as f64 / el,
        total as f64 * 0.11 / el
    );
}
