//! Command-line entry point: `crs4-cqlserver [serve options]` or
//! `crs4-cqlserver gen-cert DIR`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use crs4_cqlserver::{ErrorKind, Server};

#[derive(Parser)]
#[command(
    name = "crs4-cqlserver",
    about = "CQL v4 test server over in-memory tables (a test instrument, not a database)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Address of the first node; further nodes use the following addresses.
    #[arg(long, default_value = "127.0.0.1")]
    host: Ipv4Addr,
    /// CQL port (0 = ephemeral), shared by all nodes.
    #[arg(long, default_value_t = 9042)]
    port: u16,
    /// Print `PORT <n>` (and `ADMIN <m>`) on stdout once listening.
    #[arg(long)]
    print_port: bool,
    /// Number of nodes (127.0.0.1, 127.0.0.2, ... on the same port).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Enable PasswordAuthenticator with this user (needs --password).
    #[arg(long, requires = "password")]
    username: Option<String>,
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// PEM certificate chain; enables TLS (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Delay added to every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Fraction of user-table requests answered with --error-kind.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// overloaded | read_timeout | unavailable | server_error
    #[arg(long, default_value = "overloaded")]
    error_kind: String,
    /// Admin port for runtime control (0 = ephemeral).
    #[arg(long)]
    admin_port: Option<u16>,
    /// Load tables from this file at start, save them on SIGTERM/SIGINT.
    #[arg(long)]
    data_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write ca.pem, server.pem and server.key (self-signed CA) into DIR.
    GenCert { dir: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    if let Some(Cmd::GenCert { dir }) = &cli.command {
        if let Err(e) = crs4_cqlserver::certs::write_to(dir) {
            eprintln!("gen-cert: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(cli)) {
        eprintln!("crs4-cqlserver: {e}");
        std::process::exit(1);
    }
}

async fn serve(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let kind = ErrorKind::parse(&cli.error_kind)
        .ok_or_else(|| format!("unknown --error-kind {}", cli.error_kind))?;
    let mut b = Server::builder()
        .host(cli.host)
        .port(cli.port)
        .nodes(cli.nodes)
        .delay_ms(cli.delay_ms)
        .error_rate(cli.error_rate)
        .error_kind(kind);
    if let (Some(u), Some(p)) = (&cli.username, &cli.password) {
        b = b.credentials(u, p);
    }
    if let (Some(c), Some(k)) = (&cli.tls_cert, &cli.tls_key) {
        b = b.tls_pem(std::fs::read_to_string(c)?, std::fs::read_to_string(k)?);
    }
    if let Some(p) = cli.admin_port {
        b = b.admin_port(p);
    }
    if let Some(f) = &cli.data_file {
        b = b.data_file(f);
    }
    let handle = b.start().await?;
    if cli.print_port {
        let mut out = std::io::stdout().lock();
        writeln!(out, "PORT {}", handle.port())?;
        if let Some(a) = handle.admin_port() {
            writeln!(out, "ADMIN {a}")?;
        }
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = usr1.recv() => handle.drop_connections(),
        }
    }
    if cli.data_file.is_some() {
        handle.save()?;
    }
    handle.shutdown();
    Ok(())
}
