//! Response frame building. Responses are written by hand; a large cell is
//! not copied into the frame but referenced ([`FrameBuf::put_shared`]) and
//! written to the socket straight from the table (vectored writes), as a
//! database's own zero-copy send path would: the server's CPU then goes to
//! serving requests, not to copying blobs that the client under test shares
//! the machine's cores with.

use bytes::{BufMut, Bytes, BytesMut};

pub const VERSION_RESPONSE_V4: u8 = 0x84;
pub const HEADER_LEN: usize = 9;

pub mod opcode {
    pub const ERROR: u8 = 0x00;
    pub const STARTUP: u8 = 0x01;
    pub const READY: u8 = 0x02;
    pub const AUTHENTICATE: u8 = 0x03;
    pub const OPTIONS: u8 = 0x05;
    pub const SUPPORTED: u8 = 0x06;
    pub const QUERY: u8 = 0x07;
    pub const RESULT: u8 = 0x08;
    pub const PREPARE: u8 = 0x09;
    pub const EXECUTE: u8 = 0x0A;
    pub const REGISTER: u8 = 0x0B;
    pub const BATCH: u8 = 0x0D;
    pub const AUTH_RESPONSE: u8 = 0x0F;
    pub const AUTH_SUCCESS: u8 = 0x10;
}

/// Cells at least this long are sent by reference instead of copied.
const SHARE_MIN: usize = 4096;

/// Whether `cell` goes into a frame by reference ([`FrameBuf::put_shared`]).
pub fn is_shared(cell: &[u8]) -> bool {
    cell.len() >= SHARE_MIN
}

/// A response frame: the header, then the body in pieces (written out with
/// vectored I/O), some of which may be cells shared with the table.
#[derive(Debug, Clone)]
pub struct Frame {
    head: [u8; HEADER_LEN],
    body: Vec<Bytes>,
}

impl Frame {
    /// Header and body pieces, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.head[..]).chain(self.body.iter().map(|b| &b[..]))
    }

    /// The whole frame in one buffer (a copy).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks().flatten().copied().collect()
    }
}

/// A frame under construction: small fields go into `buf`, large cells are
/// appended by reference with `put_shared`; `finish` writes the header.
pub struct FrameBuf {
    head: [u8; HEADER_LEN],
    pub buf: BytesMut,
    body: Vec<Bytes>,
}

impl FrameBuf {
    pub fn new(stream: i16, op: u8, capacity: usize) -> FrameBuf {
        let mut head = [0u8; HEADER_LEN];
        head[0] = VERSION_RESPONSE_V4;
        head[2..4].copy_from_slice(&stream.to_be_bytes());
        head[4] = op;
        FrameBuf {
            head,
            buf: BytesMut::with_capacity(capacity),
            body: Vec::new(),
        }
    }

    /// Appends `bytes` without copying them.
    pub fn put_shared(&mut self, bytes: &Bytes) {
        if !self.buf.is_empty() {
            self.body.push(self.buf.split().freeze());
        }
        self.body.push(bytes.clone());
    }

    pub fn finish(mut self) -> Frame {
        if !self.buf.is_empty() {
            self.body.push(self.buf.freeze());
        }
        let len: usize = self.body.iter().map(Bytes::len).sum();
        self.head[5..9].copy_from_slice(&(len as i32).to_be_bytes());
        Frame {
            head: self.head,
            body: self.body,
        }
    }
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub fn put_long_string(out: &mut BytesMut, s: &str) {
    out.put_i32(s.len() as i32);
    out.put_slice(s.as_bytes());
}

pub fn put_short_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

pub fn put_bytes(out: &mut BytesMut, b: Option<&[u8]>) {
    crate::types::put_cell(out, b)
}

pub fn put_string_multimap(out: &mut BytesMut, entries: &[(&str, &[&str])]) {
    out.put_u16(entries.len() as u16);
    for (k, vs) in entries {
        put_string(out, k);
        out.put_u16(vs.len() as u16);
        for v in *vs {
            put_string(out, v);
        }
    }
}

pub fn simple_frame(stream: i16, op: u8, body: &[u8]) -> Frame {
    let mut f = FrameBuf::new(stream, op, body.len());
    f.buf.put_slice(body);
    f.finish()
}

pub fn error_frame(stream: i16, err: &crate::error::CqlError) -> Frame {
    let mut f = FrameBuf::new(stream, opcode::ERROR, 64);
    err.encode_body(&mut f.buf);
    f.finish()
}
