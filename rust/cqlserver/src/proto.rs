//! Response frame building. Responses are written by hand into one buffer
//! per frame so that blob cells are copied exactly once, from the table into
//! the outgoing frame.

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

/// A frame under construction: header space is reserved up front and the
/// body length is patched in by `finish`.
pub struct FrameBuf {
    pub buf: BytesMut,
}

impl FrameBuf {
    pub fn new(stream: i16, op: u8, capacity: usize) -> FrameBuf {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + capacity);
        buf.put_u8(VERSION_RESPONSE_V4);
        buf.put_u8(0);
        buf.put_i16(stream);
        buf.put_u8(op);
        buf.put_i32(0);
        FrameBuf { buf }
    }

    pub fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - HEADER_LEN) as i32;
        self.buf[5..9].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
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

pub fn simple_frame(stream: i16, op: u8, body: &[u8]) -> Bytes {
    let mut f = FrameBuf::new(stream, op, body.len());
    f.buf.put_slice(body);
    f.finish()
}

pub fn error_frame(stream: i16, err: &crate::error::CqlError) -> Bytes {
    let mut f = FrameBuf::new(stream, opcode::ERROR, 64);
    err.encode_body(&mut f.buf);
    f.finish()
}
