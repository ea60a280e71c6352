//! Errors: `CqlError` is what goes back to the client as an ERROR frame;
//! `ServerError` covers starting and running the server itself.

use bytes::{BufMut, BytesMut};

use crate::proto::{put_short_bytes, put_string};

/// An error answered to a request, with the protocol's code and any extra
/// fields that code carries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CqlError {
    #[error("server error: {0}")]
    Server(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("authentication error: {0}")]
    Auth(String),
    #[error("unavailable")]
    Unavailable,
    #[error("overloaded")]
    Overloaded,
    #[error("read timeout")]
    ReadTimeout,
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("already exists: {keyspace}.{table}")]
    AlreadyExists { keyspace: String, table: String },
    #[error("unprepared")]
    Unprepared(Vec<u8>),
}

impl CqlError {
    pub fn syntax(m: impl Into<String>) -> Self {
        CqlError::Syntax(m.into())
    }

    pub fn invalid(m: impl Into<String>) -> Self {
        CqlError::Invalid(m.into())
    }

    pub fn code(&self) -> i32 {
        match self {
            CqlError::Server(_) => 0x0000,
            CqlError::Protocol(_) => 0x000A,
            CqlError::Auth(_) => 0x0100,
            CqlError::Unavailable => 0x1000,
            CqlError::Overloaded => 0x1001,
            CqlError::ReadTimeout => 0x1200,
            CqlError::Syntax(_) => 0x2000,
            CqlError::Invalid(_) => 0x2200,
            CqlError::AlreadyExists { .. } => 0x2400,
            CqlError::Unprepared(_) => 0x2500,
        }
    }

    fn message(&self) -> String {
        match self {
            CqlError::Server(m)
            | CqlError::Protocol(m)
            | CqlError::Auth(m)
            | CqlError::Syntax(m)
            | CqlError::Invalid(m) => m.clone(),
            CqlError::Unavailable => "Cannot achieve consistency level ONE".into(),
            CqlError::Overloaded => "Server is overloaded (injected)".into(),
            CqlError::ReadTimeout => {
                "Operation timed out - received only 0 responses (injected)".into()
            }
            CqlError::AlreadyExists { keyspace, table } if table.is_empty() => {
                format!("Cannot add existing keyspace \"{keyspace}\"")
            }
            CqlError::AlreadyExists { keyspace, table } => {
                format!("Object {keyspace}.{table} already exists")
            }
            CqlError::Unprepared(_) => "Prepared query with ID not found".into(),
        }
    }

    /// ERROR message body.
    pub fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.code());
        put_string(out, &self.message());
        match self {
            CqlError::Unavailable => {
                out.put_u16(0x0001); // consistency ONE
                out.put_i32(1); // required
                out.put_i32(0); // alive
            }
            CqlError::ReadTimeout => {
                out.put_u16(0x0001);
                out.put_i32(0); // received
                out.put_i32(1); // blockfor
                out.put_u8(0); // data_present
            }
            CqlError::AlreadyExists { keyspace, table } => {
                put_string(out, keyspace);
                put_string(out, table);
            }
            CqlError::Unprepared(id) => put_short_bytes(out, id),
            _ => {}
        }
    }
}

/// Injectable error kinds for the fault knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Overloaded,
    ReadTimeout,
    Unavailable,
    ServerError,
}

impl ErrorKind {
    pub fn parse(s: &str) -> Option<ErrorKind> {
        Some(
            match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "overloaded" => ErrorKind::Overloaded,
                "read_timeout" => ErrorKind::ReadTimeout,
                "unavailable" => ErrorKind::Unavailable,
                "server_error" => ErrorKind::ServerError,
                _ => return None,
            },
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ReadTimeout => "read_timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ServerError => "server_error",
        }
    }

    pub fn to_error(self) -> CqlError {
        match self {
            ErrorKind::Overloaded => CqlError::Overloaded,
            ErrorKind::ReadTimeout => CqlError::ReadTimeout,
            ErrorKind::Unavailable => CqlError::Unavailable,
            ErrorKind::ServerError => CqlError::Server("injected server error".into()),
        }
    }
}

/// Failures starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS configuration error: {0}")]
    Tls(String),
    #[error("data file error: {0}")]
    DataFile(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}
