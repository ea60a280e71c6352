//! Listeners, connections, request dispatch, fault knobs and the admin port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use cassandra_protocol::frame::message_batch::BatchQuerySubj;
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::{Opcode, Version};
use cassandra_protocol::query::QueryValues;
use cassandra_protocol::types::value::Value;
use std::io::IoSlice;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cql;
use crate::error::{CqlError, ErrorKind, ServerError};
use crate::exec::{self, Bound_, Ctx, Outcome, Prepared};
use crate::proto::{self, opcode, Frame, FrameBuf};
use crate::store::Catalog;

const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Default)]
pub struct NodeStats {
    pub requests: AtomicU64,
    pub queries: AtomicU64,
    pub prepares: AtomicU64,
    pub executes: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub injected_errors: AtomicU64,
    pub connections: AtomicU64,
    pub open_connections: AtomicU64,
}

impl NodeStats {
    fn reset(&self) {
        for c in [
            &self.requests,
            &self.queries,
            &self.prepares,
            &self.executes,
            &self.batches,
            &self.errors,
            &self.injected_errors,
            &self.connections,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

pub struct NodeInfo {
    pub addr: Ipv4Addr,
    pub host_id: uuid::Uuid,
    pub token: i64,
    pub stats: NodeStats,
    /// A down node closes its connections and every new one at once.
    pub down: AtomicBool,
    /// Extra response delay of this node only (a slow node), in ms.
    pub delay_ms: AtomicU64,
    /// Bumped to close this node's connections.
    drop_tx: watch::Sender<u64>,
}

impl NodeInfo {
    /// Takes the node down (closing its connections) or brings it back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_tx.send_modify(|g| *g += 1);
        }
    }
}

/// Fault knobs, changeable at runtime through the admin port.
pub struct Knobs {
    delay_ms: AtomicU64,
    error_rate: AtomicU64,
    error_kind: AtomicU8,
}

const KINDS: [ErrorKind; 4] = [
    ErrorKind::Overloaded,
    ErrorKind::ReadTimeout,
    ErrorKind::Unavailable,
    ErrorKind::ServerError,
];

impl Knobs {
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms.load(Ordering::Relaxed)
    }
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed)
    }
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Ordering::Relaxed))
    }
    pub fn set_error_rate(&self, r: f64) {
        self.error_rate
            .store(r.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed)
    }
    pub fn error_kind(&self) -> ErrorKind {
        KINDS[self.error_kind.load(Ordering::Relaxed) as usize]
    }
    pub fn set_error_kind(&self, k: ErrorKind) {
        let i = KINDS.iter().position(|x| *x == k).unwrap_or(0);
        self.error_kind.store(i as u8, Ordering::Relaxed)
    }
}

/// State shared by every listener and connection.
pub struct Shared {
    pub catalog: Catalog,
    pub prepared: RwLock<HashMap<[u8; 16], Arc<Prepared>>>,
    pub nodes: Vec<NodeInfo>,
    pub knobs: Knobs,
    pub cluster_name: String,
    pub gossip_generation: i32,
    credentials: Option<(String, String)>,
    port: AtomicU16,
    drop_tx: watch::Sender<u64>,
    data_file: Option<PathBuf>,
    save_lock: Mutex<()>,
}

impl Shared {
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    pub fn drop_connections(&self) {
        self.drop_tx.send_modify(|g| *g += 1);
    }

    pub fn save(&self) -> Result<(), ServerError> {
        let _g = self.save_lock.lock().unwrap();
        match &self.data_file {
            Some(p) => crate::persist::save(&self.catalog, p),
            None => Err(ServerError::Config("no data file configured".into())),
        }
    }

    pub fn stats_json(&self) -> String {
        let mut s = String::from("{\"nodes\":[");
        let mut total = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            let st = &n.stats;
            let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
            total += g(&st.requests);
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "{{\"node\":{i},\"address\":\"{}\",\"requests\":{},\"queries\":{},\"prepares\":{},\"executes\":{},\"batches\":{},\"errors\":{},\"injected_errors\":{},\"connections\":{},\"open_connections\":{},\"down\":{},\"node_delay_ms\":{}}}",
                n.addr,
                g(&st.requests),
                g(&st.queries),
                g(&st.prepares),
                g(&st.executes),
                g(&st.batches),
                g(&st.errors),
                g(&st.injected_errors),
                g(&st.connections),
                g(&st.open_connections),
                n.down.load(Ordering::Relaxed),
                g(&n.delay_ms),
            ));
        }
        s.push_str(&format!(
            "],\"total_requests\":{total},\"delay_ms\":{},\"error_rate\":{},\"error_kind\":\"{}\"}}",
            self.knobs.delay_ms(),
            self.knobs.error_rate(),
            self.knobs.error_kind().name()
        ));
        s
    }
}

/// Configures and starts a server.
pub struct ServerBuilder {
    host: Ipv4Addr,
    port: u16,
    nodes: usize,
    credentials: Option<(String, String)>,
    tls: Option<(String, String)>,
    delay_ms: u64,
    error_rate: f64,
    error_kind: ErrorKind,
    admin_port: Option<u16>,
    data_file: Option<PathBuf>,
}

pub struct Server;

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            host: Ipv4Addr::LOCALHOST,
            port: 0,
            nodes: 1,
            credentials: None,
            tls: None,
            delay_ms: 0,
            error_rate: 0.0,
            error_kind: ErrorKind::Overloaded,
            admin_port: None,
            data_file: None,
        }
    }
}

impl ServerBuilder {
    pub fn host(mut self, host: Ipv4Addr) -> Self {
        self.host = host;
        self
    }
    /// 0 picks an ephemeral port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Number of nodes, on consecutive addresses starting at `host`.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.max(1);
        self
    }
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }
    /// Serve TLS with this PEM certificate chain and PEM private key.
    pub fn tls_pem(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }
    pub fn error_kind(mut self, kind: ErrorKind) -> Self {
        self.error_kind = kind;
        self
    }
    /// Enables the admin port (0 picks an ephemeral port).
    pub fn admin_port(mut self, port: u16) -> Self {
        self.admin_port = Some(port);
        self
    }
    pub fn data_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_file = Some(path.into());
        self
    }

    pub async fn start(self) -> Result<ServerHandle, ServerError> {
        let tls = match &self.tls {
            Some((c, k)) => Some(crate::tls::acceptor(c, k)?),
            None => None,
        };
        let n = self.nodes;
        let step = (u64::MAX / n as u64) as i64;
        let base = u32::from(self.host);
        let nodes = (0..n)
            .map(|i| NodeInfo {
                addr: Ipv4Addr::from(base + i as u32),
                host_id: uuid::Uuid::new_v4(),
                // Even split of the ring: node i owns (token[i-1], token[i]].
                token: i64::MIN.wrapping_add(step.wrapping_mul(i as i64 + 1)),
                stats: NodeStats::default(),
                down: AtomicBool::new(false),
                delay_ms: AtomicU64::new(0),
                drop_tx: watch::channel(0u64).0,
            })
            .collect();
        let (drop_tx, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            catalog: Catalog::default(),
            prepared: RwLock::new(HashMap::new()),
            nodes,
            knobs: Knobs {
                delay_ms: AtomicU64::new(self.delay_ms),
                error_rate: AtomicU64::new(0),
                error_kind: AtomicU8::new(0),
            },
            cluster_name: "Test Cluster".into(),
            gossip_generation: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                & 0x7fff_ffff) as i32,
            credentials: self.credentials,
            port: AtomicU16::new(0),
            drop_tx,
            data_file: self.data_file.clone(),
            save_lock: Mutex::new(()),
        });
        shared.knobs.set_error_rate(self.error_rate);
        shared.knobs.set_error_kind(self.error_kind);
        if let Some(p) = &self.data_file {
            if p.exists() {
                crate::persist::load(&shared.catalog, p)?;
            }
        }

        let mut listeners = Vec::new();
        let mut port = self.port;
        for node in &shared.nodes {
            let l = TcpListener::bind(SocketAddr::from((node.addr, port))).await?;
            port = l.local_addr()?.port();
            listeners.push(l);
        }
        shared.port.store(port, Ordering::Relaxed);
        let mut tasks = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            tasks.push(tokio::spawn(accept_loop(l, shared.clone(), i, tls.clone())));
        }
        let mut admin = None;
        if let Some(ap) = self.admin_port {
            let l = TcpListener::bind(SocketAddr::from((self.host, ap))).await?;
            admin = Some(l.local_addr()?.port());
            tasks.push(tokio::spawn(admin_loop(l, shared.clone())));
        }
        Ok(ServerHandle {
            shared,
            port,
            admin_port: admin,
            tasks,
            stopped: AtomicBool::new(false),
        })
    }
}

/// A running server; dropping it (or `shutdown`) stops the listeners and
/// closes every connection.
pub struct ServerHandle {
    shared: Arc<Shared>,
    port: u16,
    admin_port: Option<u16>,
    tasks: Vec<JoinHandle<()>>,
    stopped: AtomicBool,
}

impl ServerHandle {
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }
    /// Node addresses (the first is the `host` given to the builder).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .nodes
            .iter()
            .map(|n| SocketAddr::from((n.addr, self.port)))
            .collect()
    }
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    pub fn knobs(&self) -> &Knobs {
        &self.shared.knobs
    }
    pub fn drop_connections(&self) {
        self.shared.drop_connections()
    }
    pub fn stats_json(&self) -> String {
        self.shared.stats_json()
    }
    /// Requests served by node `i`.
    pub fn requests(&self, node: usize) -> u64 {
        self.shared.nodes[node]
            .stats
            .requests
            .load(Ordering::Relaxed)
    }
    pub fn save(&self) -> Result<(), ServerError> {
        self.shared.save()
    }
    pub fn shutdown(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            for t in &self.tasks {
                t.abort();
            }
            self.shared.drop_connections();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    l: TcpListener,
    shared: Arc<Shared>,
    node: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (sock, _) = match l.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.nodes[node].down.load(Ordering::SeqCst) {
            // Closed before any byte is read: the client sees a refused session.
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    let mut drop_rx = shared.drop_tx.subscribe();
                    let accepted = tokio::select! {
                        r = tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)) => r,
                        _ = drop_rx.changed() => return,
                    };
                    if let Ok(Ok(s)) = accepted {
                        serve_conn(s, shared, node).await;
                    }
                }
                None => serve_conn::<TcpStream>(sock, shared, node).await,
            }
        });
    }
}

struct ConnState {
    keyspace: Mutex<Option<String>>,
}

async fn serve_conn<S>(stream: S, shared: Arc<Shared>, node: usize)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = &shared.nodes[node].stats;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.open_connections.fetch_add(1, Ordering::Relaxed);
    let mut drop_rx = shared.drop_tx.subscribe();
    let mut node_drop_rx = shared.nodes[node].drop_tx.subscribe();
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Frame>(4096);
    let writer = tokio::spawn(write_loop(wr, rx));
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let state = Arc::new(ConnState {
        keyspace: Mutex::new(None),
    });
    let mut authenticated = shared.credentials.is_none();
    let mut delay_line: Option<mpsc::UnboundedSender<Delayed>> = None;
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd) => f,
            _ = drop_rx.changed() => break,
            _ = node_drop_rx.changed() => break,
        };
        let (version, stream_id, op, body) = match frame {
            Ok(Some(f)) => f,
            _ => break,
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if version != 4 {
            let e = CqlError::Protocol(format!(
                "Invalid or unsupported protocol version ({version}); supported versions are (4/v4)"
            ));
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(proto::error_frame(stream_id, &e)).await;
            continue;
        }
        let delay = shared.knobs.delay_ms() + shared.nodes[node].delay_ms.load(Ordering::Relaxed);
        let reply = |frame: Frame| {
            let tx = tx.clone();
            async move {
                if delay > 0 {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let _ = tx.send(frame).await;
                    });
                } else {
                    let _ = tx.send(frame).await;
                }
            }
        };
        match op {
            opcode::OPTIONS => {
                let mut f = FrameBuf::new(stream_id, opcode::SUPPORTED, 64);
                proto::put_string_multimap(
                    &mut f.buf,
                    &[
                        ("CQL_VERSION", &[crate::system::CQL_VERSION]),
                        ("COMPRESSION", &[]),
                        ("PROTOCOL_VERSIONS", &["4/v4"]),
                    ],
                );
                reply(f.finish()).await;
            }
            opcode::STARTUP => {
                let frame = match RequestBody::try_from(&body, Opcode::Startup, Version::V4) {
                    Ok(RequestBody::Startup(s)) => {
                        let compression = s
                            .map
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
                            .map(|(_, v)| v.clone());
                        match compression {
                            Some(c) if !c.is_empty() => proto::error_frame(
                                stream_id,
                                &CqlError::Protocol(format!("Unknown compression algorithm: {c}")),
                            ),
                            _ if shared.credentials.is_some() => {
                                let mut f = FrameBuf::new(stream_id, opcode::AUTHENTICATE, 64);
                                proto::put_string(
                                    &mut f.buf,
                                    "org.apache.cassandra.auth.PasswordAuthenticator",
                                );
                                f.finish()
                            }
                            _ => proto::simple_frame(stream_id, opcode::READY, &[]),
                        }
                    }
                    _ => proto::error_frame(
                        stream_id,
                        &CqlError::Protocol("malformed STARTUP".into()),
                    ),
                };
                reply(frame).await;
            }
            opcode::AUTH_RESPONSE => {
                let ok = match RequestBody::try_from(&body, Opcode::AuthResponse, Version::V4) {
                    Ok(RequestBody::AuthResponse(a)) => {
                        check_plain(a.data.as_slice().unwrap_or(&[]), &shared.credentials)
                    }
                    _ => false,
                };
                let frame = if ok {
                    authenticated = true;
                    let mut f = FrameBuf::new(stream_id, opcode::AUTH_SUCCESS, 4);
                    proto::put_bytes(&mut f.buf, None);
                    f.finish()
                } else {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    proto::error_frame(
                        stream_id,
                        &CqlError::Auth("Provided username and/or password are incorrect".into()),
                    )
                };
                reply(frame).await;
            }
            opcode::REGISTER => {
                reply(proto::simple_frame(stream_id, opcode::READY, &[])).await;
            }
            opcode::QUERY | opcode::PREPARE | opcode::EXECUTE | opcode::BATCH => {
                if !authenticated {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    let e = CqlError::Auth("the client is not authenticated".into());
                    reply(proto::error_frame(stream_id, &e)).await;
                    continue;
                }
                if delay > 0 {
                    // The delay comes before the work, as if the request had
                    // travelled a slow network: holding finished responses for
                    // the delay instead would make this process keep every
                    // in-flight blob in (cache-cold) memory, a cost that a real
                    // network puts in its buffers, not in the server. Like a
                    // network path, the delay line keeps the connection's
                    // order: requests come out one by one, spaced as they went
                    // in, not all at once when their timers fire together.
                    let line = delay_line.get_or_insert_with(|| {
                        let (line_tx, line_rx) = mpsc::unbounded_channel();
                        tokio::spawn(run_delay_line(
                            line_rx,
                            shared.clone(),
                            node,
                            state.clone(),
                            tx.clone(),
                        ));
                        line_tx
                    });
                    let due = tokio::time::Instant::now() + Duration::from_millis(delay);
                    let _ = line.send(Delayed {
                        due,
                        stream_id,
                        op,
                        body,
                    });
                    continue;
                }
                let shared = shared.clone();
                let state = state.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let frame = handle_request(&shared, node, &state, stream_id, op, &body);
                    let _ = tx.send(frame).await;
                });
            }
            other => {
                let e = CqlError::Protocol(format!("unexpected opcode {other:#x}"));
                reply(proto::error_frame(stream_id, &e)).await;
            }
        }
    }
    writer.abort();
    stats.open_connections.fetch_sub(1, Ordering::Relaxed);
}

/// A request on its way through the delay line.
struct Delayed {
    due: tokio::time::Instant,
    stream_id: i16,
    op: u8,
    body: Vec<u8>,
}

/// Serves a connection's delayed requests in arrival order, each when due.
async fn run_delay_line(
    mut rx: mpsc::UnboundedReceiver<Delayed>,
    shared: Arc<Shared>,
    node: usize,
    state: Arc<ConnState>,
    tx: mpsc::Sender<Frame>,
) {
    while let Some(r) = rx.recv().await {
        tokio::time::sleep_until(r.due).await;
        // A node that went down meanwhile never sees the request.
        if shared.nodes[node].down.load(Ordering::SeqCst) {
            continue;
        }
        let frame = handle_request(&shared, node, &state, r.stream_id, r.op, &r.body);
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

fn check_plain(token: &[u8], creds: &Option<(String, String)>) -> bool {
    let Some((u, p)) = creds else { return true };
    let mut parts = token.split(|b| *b == 0);
    let _authzid = parts.next();
    let user = parts.next().unwrap_or(&[]);
    let pass = parts.next().unwrap_or(&[]);
    user == u.as_bytes() && pass == p.as_bytes()
}

/// Pieces of queued frames written per system call at most (within IOV_MAX).
const WRITE_SLICES: usize = 256;

async fn write_loop<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::Receiver<Frame>) {
    // Passes large writes through; buffers small pieces for a writer
    // without vectored writes (TLS).
    let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, wr);
    let mut frames: Vec<Frame> = Vec::new();
    while let Some(frame) = rx.recv().await {
        // Whatever is already queued goes out with it, in as few writes as
        // the pieces allow; large cells are written from the table's memory.
        frames.push(frame);
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
        {
            let mut slices: Vec<IoSlice> = frames
                .iter()
                .flat_map(Frame::chunks)
                .map(IoSlice::new)
                .collect();
            for mut rest in slices.chunks_mut(WRITE_SLICES) {
                while !rest.is_empty() {
                    match w.write_vectored(rest).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => IoSlice::advance_slices(&mut rest, n),
                    }
                }
            }
        }
        frames.clear();
        if w.flush().await.is_err() {
            return;
        }
    }
}

type RawFrame = (u8, i16, u8, Vec<u8>);

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Option<RawFrame>> {
    let mut hdr = [0u8; proto::HEADER_LEN];
    match rd.read_exact(&mut hdr).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let version = hdr[0] & 0x7F;
    let stream = i16::from_be_bytes([hdr[2], hdr[3]]);
    let op = hdr[4];
    let len = u32::from_be_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(Some((version, stream, op, body)))
}

fn values_of(qv: Option<QueryValues>, bind_names: &[Option<String>]) -> Vec<Bound_> {
    let conv = |v: Value| -> Bound_ {
        match v {
            Value::Some(b) => Some(Some(Bytes::from(b))),
            Value::Null => Some(None),
            Value::NotSet => None,
        }
    };
    match qv {
        None => Vec::new(),
        Some(QueryValues::SimpleValues(vs)) => vs.into_iter().map(conv).collect(),
        Some(QueryValues::NamedValues(mut m)) => bind_names
            .iter()
            .map(|n| {
                n.as_ref()
                    .and_then(|n| m.remove(n))
                    .map(conv)
                    .unwrap_or(None)
            })
            .collect(),
    }
}

/// Reads the flags byte that follows `[prefix][consistency]` in QUERY and
/// EXECUTE bodies (the codec does not expose skip_metadata).
fn flags_after(body: &[u8], prefix_len: usize) -> u8 {
    body.get(prefix_len + 2).copied().unwrap_or(0)
}

fn maybe_inject(
    shared: &Shared,
    node: usize,
    stmt: &cql::Stmt,
    ks: Option<&str>,
) -> Option<CqlError> {
    let rate = shared.knobs.error_rate();
    if rate > 0.0 && exec::targets_user_table(stmt, ks) && rand::random::<f64>() < rate {
        shared.nodes[node]
            .stats
            .injected_errors
            .fetch_add(1, Ordering::Relaxed);
        return Some(shared.knobs.error_kind().to_error());
    }
    None
}

fn handle_request(
    shared: &Shared,
    node: usize,
    state: &ConnState,
    stream: i16,
    op: u8,
    body: &[u8],
) -> Frame {
    let stats = &shared.nodes[node].stats;
    // The frame codec panics on some malformed bodies (slicing past the end):
    // answer those with a protocol error instead of never answering.
    let run = std::panic::AssertUnwindSafe(|| match op {
        opcode::QUERY => {
            stats.queries.fetch_add(1, Ordering::Relaxed);
            run_query(shared, node, state, body)
        }
        opcode::PREPARE => {
            stats.prepares.fetch_add(1, Ordering::Relaxed);
            run_prepare(shared, node, state, body)
        }
        opcode::EXECUTE => {
            stats.executes.fetch_add(1, Ordering::Relaxed);
            run_execute(shared, node, state, body)
        }
        _ => {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            run_batch(shared, node, state, body)
        }
    });
    let r = std::panic::catch_unwind(run)
        .unwrap_or_else(|_| Err(CqlError::Protocol("malformed request".into())));
    match r {
        Ok((outcome, skip_metadata)) => {
            let hint = match &outcome {
                Outcome::Rows(r) => exec::rows_size_hint(r),
                _ => 256,
            };
            let mut f = FrameBuf::new(stream, opcode::RESULT, hint);
            exec::encode_outcome(&mut f, &outcome, skip_metadata);
            f.finish()
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            proto::error_frame(stream, &e)
        }
    }
}

fn current_ks(state: &ConnState) -> Option<String> {
    state.keyspace.lock().unwrap().clone()
}

fn run_parsed(
    shared: &Shared,
    node: usize,
    state: &ConnState,
    parsed: &cql::Parsed,
    ks: Option<String>,
    values: Vec<Bound_>,
    (page_size, paging_state): (Option<i32>, Option<&[u8]>),
) -> Result<Outcome, CqlError> {
    if let Some(e) = maybe_inject(shared, node, &parsed.stmt, ks.as_deref()) {
        return Err(e);
    }
    if values.len() != parsed.bind_names.len() {
        return Err(CqlError::invalid(format!(
            "There were {} markers(?) in CQL but {} bound variables",
            parsed.bind_names.len(),
            values.len()
        )));
    }
    let ctx = Ctx {
        shared,
        node,
        keyspace: ks,
    };
    let (p, vals) = exec::inline_literals(parsed, values, None, &ctx)?;
    let out = ctx.execute(&p, &vals, page_size, paging_state)?;
    if let Outcome::SetKeyspace(k) = &out {
        *state.keyspace.lock().unwrap() = Some(k.clone());
    }
    Ok(out)
}

fn protocol_err<E: std::fmt::Display>(e: E) -> CqlError {
    CqlError::Protocol(format!("malformed request: {e}"))
}

fn run_query(
    shared: &Shared,
    node: usize,
    state: &ConnState,
    body: &[u8],
) -> Result<(Outcome, bool), CqlError> {
    let q = match RequestBody::try_from(body, Opcode::Query, Version::V4).map_err(protocol_err)? {
        RequestBody::Query(q) => q,
        _ => return Err(CqlError::Protocol("expected QUERY".into())),
    };
    let parsed = cql::parse(&q.query)?;
    let p = q.query_params;
    let ks = p.keyspace.clone().or_else(|| current_ks(state));
    let values = values_of(p.values, &parsed.bind_names);
    let out = run_parsed(
        shared,
        node,
        state,
        &parsed,
        ks,
        values,
        (
            p.page_size,
            p.paging_state.as_ref().and_then(|s| s.as_slice()),
        ),
    )?;
    Ok((out, false))
}

fn run_prepare(
    shared: &Shared,
    node: usize,
    state: &ConnState,
    body: &[u8],
) -> Result<(Outcome, bool), CqlError> {
    let q = match RequestBody::try_from(body, Opcode::Prepare, Version::V4).map_err(protocol_err)? {
        RequestBody::Prepare(q) => q,
        _ => return Err(CqlError::Protocol("expected PREPARE".into())),
    };
    let ctx = Ctx {
        shared,
        node,
        keyspace: q.keyspace.clone().or_else(|| current_ks(state)),
    };
    let p = Arc::new(ctx.prepare(&q.query)?);
    shared.prepared.write().unwrap().insert(p.id, p.clone());
    Ok((Outcome::Prepared(p), false))
}

fn lookup_prepared(shared: &Shared, id: &[u8]) -> Result<Arc<Prepared>, CqlError> {
    let key: Option<[u8; 16]> = id.try_into().ok();
    key.and_then(|k| shared.prepared.read().unwrap().get(&k).cloned())
        .ok_or_else(|| CqlError::Unprepared(id.to_vec()))
}

fn run_execute(
    shared: &Shared,
    node: usize,
    state: &ConnState,
    body: &[u8],
) -> Result<(Outcome, bool), CqlError> {
    let e = match RequestBody::try_from(body, Opcode::Execute, Version::V4).map_err(protocol_err)? {
        RequestBody::Execute(e) => e,
        _ => return Err(CqlError::Protocol("expected EXECUTE".into())),
    };
    let id = e.id.into_bytes().unwrap_or_default();
    let skip_metadata = flags_after(body, 2 + id.len()) & 0x02 != 0;
    let prepared = lookup_prepared(shared, &id)?;
    let p = e.query_parameters;
    let values = values_of(p.values, &prepared.parsed.bind_names);
    let out = run_parsed(
        shared,
        node,
        state,
        &prepared.parsed,
        prepared.keyspace.clone(),
        values,
        (
            p.page_size,
            p.paging_state.as_ref().and_then(|s| s.as_slice()),
        ),
    )?;
    Ok((out, skip_metadata))
}

fn run_batch(
    shared: &Shared,
    node: usize,
    state: &ConnState,
    body: &[u8],
) -> Result<(Outcome, bool), CqlError> {
    let b = match RequestBody::try_from(body, Opcode::Batch, Version::V4).map_err(protocol_err)? {
        RequestBody::Batch(b) => b,
        _ => return Err(CqlError::Protocol("expected BATCH".into())),
    };
    let ks = b.keyspace.clone().or_else(|| current_ks(state));
    // Resolve everything first so a bad statement fails the whole batch.
    let mut items = Vec::with_capacity(b.queries.len());
    for q in b.queries {
        let (parsed, kspace) = match q.subject {
            BatchQuerySubj::QueryString(s) => (Arc::new(cql::parse(&s)?), ks.clone()),
            BatchQuerySubj::PreparedId(id) => {
                let p = lookup_prepared(shared, &id.into_bytes().unwrap_or_default())?;
                let k = p.keyspace.clone();
                (Arc::new(p.parsed.clone()), k)
            }
        };
        match parsed.stmt {
            cql::Stmt::Insert { .. } | cql::Stmt::Delete { .. } => {}
            _ => {
                return Err(CqlError::invalid(
                    "Only INSERT, UPDATE and DELETE statements are allowed in a BATCH",
                ))
            }
        }
        let values = values_of(Some(q.values), &parsed.bind_names);
        items.push((parsed, kspace, values));
    }
    for (parsed, kspace, values) in items {
        run_parsed(shared, node, state, &parsed, kspace, values, (None, None))?;
    }
    Ok((Outcome::Void, false))
}

async fn admin_loop(l: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((sock, _)) = l.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = sock.into_split();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = admin_command(&shared, line.trim());
                if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The node named by an admin argument (its index, 0-based).
fn node_arg<'a>(shared: &'a Shared, arg: Option<&str>) -> Result<&'a NodeInfo, String> {
    let n = shared.nodes.len();
    arg.and_then(|a| a.parse::<usize>().ok())
        .and_then(|i| shared.nodes.get(i))
        .ok_or_else(|| format!("ERR expected a node index in 0..{n}"))
}

/// Executes one admin command line and returns the one-line reply.
pub fn admin_command(shared: &Shared, line: &str) -> String {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("").to_ascii_lowercase();
    let arg = parts.next();
    let arg2 = parts.next();
    match (cmd.as_str(), arg) {
        ("ping", _) => "OK".into(),
        ("drop", _) => {
            shared.drop_connections();
            "OK".into()
        }
        ("delay", Some(ms)) => match (ms.parse::<u64>(), arg2, parts.next()) {
            (Ok(ms), None, _) => {
                shared.knobs.set_delay_ms(ms);
                "OK".into()
            }
            (Ok(ms), Some(w), Some(k)) if w.eq_ignore_ascii_case("node") => {
                match node_arg(shared, Some(k)) {
                    Ok(n) => {
                        n.delay_ms.store(ms, Ordering::Relaxed);
                        "OK".into()
                    }
                    Err(e) => e,
                }
            }
            _ => "ERR delay expects milliseconds, optionally followed by `node K`".into(),
        },
        ("node-down", k) | ("node-up", k) => match node_arg(shared, k) {
            Ok(n) => {
                n.set_down(cmd == "node-down");
                "OK".into()
            }
            Err(e) => e,
        },
        ("error-rate", Some(r)) => match r.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => {
                if let Some(k) = arg2 {
                    match ErrorKind::parse(k) {
                        Some(k) => shared.knobs.set_error_kind(k),
                        None => return format!("ERR unknown error kind {k}"),
                    }
                }
                shared.knobs.set_error_rate(r);
                "OK".into()
            }
            _ => "ERR error-rate expects a number in [0, 1]".into(),
        },
        ("error-kind", Some(k)) => match ErrorKind::parse(k) {
            Some(k) => {
                shared.knobs.set_error_kind(k);
                "OK".into()
            }
            None => format!("ERR unknown error kind {k}"),
        },
        ("stats", _) => shared.stats_json(),
        ("reset-stats", _) => {
            for n in &shared.nodes {
                n.stats.reset();
            }
            "OK".into()
        }
        ("save", _) => match shared.save() {
            Ok(()) => "OK".into(),
            Err(e) => format!("ERR {e}"),
        },
        _ => format!("ERR unknown command: {line}"),
    }
}

#[cfg(test)]
mod frame_properties {
    //! Random and mutated frames must never panic the frame reader or the
    //! request handlers: a test instrument that crashes hides client bugs.
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn rt() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
    }

    fn long_string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn query(q: &str) -> Vec<u8> {
        let mut v = long_string(q);
        v.extend_from_slice(&[0, 1, 0]); // consistency ONE, no flags
        v
    }

    struct Fixture {
        _handle: ServerHandle,
        shared: Arc<Shared>,
        state: ConnState,
        execute: Vec<u8>,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let handle = rt().block_on(Server::builder().port(0).start()).expect("server");
            let shared = handle.shared().clone();
            let state = ConnState {
                keyspace: Mutex::new(None),
            };
            for q in [
                "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
                "CREATE TABLE ks.t (id uuid PRIMARY KEY, label int, data blob)",
                "INSERT INTO ks.t (id, label, data) VALUES (5bd6b5d4-5d5e-4c3b-9a47-0b7e0d1f2a3b, 1, 0xff)",
            ] {
                handle_request(&shared, 0, &state, 1, opcode::QUERY, &query(q));
            }
            let prepared = handle_request(
                &shared,
                0,
                &state,
                1,
                opcode::PREPARE,
                &long_string("SELECT label, data FROM ks.t WHERE id = ?"),
            );
            // RESULT body: kind (4) then the id as [short bytes].
            let prepared = prepared.to_vec();
            let body = &prepared[proto::HEADER_LEN + 4..];
            let id_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut execute = body[..2 + id_len].to_vec();
            execute.extend_from_slice(&[0, 1, 0x01, 0, 1, 0, 0, 0, 16]);
            execute.extend_from_slice(&[0x5b; 16]);
            Fixture {
                _handle: handle,
                shared,
                state,
                execute,
            }
        })
    }

    fn valid(op: u8) -> Vec<u8> {
        match op {
            opcode::QUERY => query("SELECT id, label, data FROM ks.t WHERE id IN (5bd6b5d4-5d5e-4c3b-9a47-0b7e0d1f2a3b) LIMIT 3"),
            opcode::PREPARE => long_string("SELECT data FROM ks.t WHERE token(id) > ? AND token(id) <= ?"),
            opcode::EXECUTE => fixture().execute.clone(),
            _ => {
                // An unlogged BATCH of one INSERT query string, no values.
                let mut v = vec![1, 0, 1, 0];
                v.extend_from_slice(&long_string(
                    "INSERT INTO ks.t (id, data) VALUES (5bd6b5d4-5d5e-4c3b-9a47-0b7e0d1f2a3c, 0x01)",
                ));
                v.extend_from_slice(&[0, 0, 0, 1, 0]); // no values; ONE; no flags
                v
            }
        }
    }

    fn handle(op: u8, body: &[u8]) {
        quiet_panics();
        let f = fixture();
        let frame = handle_request(&f.shared, 0, &f.state, 3, op, body);
        assert!(frame.to_vec().len() >= proto::HEADER_LEN);
    }

    const OPS: [u8; 4] = [
        opcode::QUERY,
        opcode::PREPARE,
        opcode::EXECUTE,
        opcode::BATCH,
    ];

    fn quiet_panics() {
        // Caught codec panics would print a backtrace per case.
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_bodies_never_panic(
            op in prop::sample::select(OPS.to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            handle(op, &body);
        }

        #[test]
        fn mutated_valid_bodies_never_panic(
            op in prop::sample::select(OPS.to_vec()),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut body = valid(op);
            for (at, byte, how) in edits {
                match how {
                    0 if !body.is_empty() => { let i = at.index(body.len()); body[i] = byte; }
                    1 => { let i = at.index(body.len() + 1); body.truncate(i); }
                    _ => { let i = at.index(body.len() + 1); body.insert(i, byte); }
                }
            }
            handle(op, &body);
        }

        #[test]
        fn frame_reader_never_panics(
            header in proptest::collection::vec(any::<u8>(), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = header;
            bytes.extend_from_slice(&body);
            let mut rd: &[u8] = &bytes;
            // Reads frames until the stream ends or an error: never panics,
            // never loops without consuming input.
            for _ in 0..8 {
                match rt().block_on(read_frame(&mut rd)) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn valid_bodies_succeed() {
        for op in OPS {
            let f = fixture();
            let frame = handle_request(&f.shared, 0, &f.state, 3, op, &valid(op)).to_vec();
            assert_eq!(frame[4], opcode::RESULT, "op {op:#x}: {:?}", &frame[..]);
        }
    }
}
