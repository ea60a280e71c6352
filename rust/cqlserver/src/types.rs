//! CQL column types, their wire option ids, and conversion of literals to the
//! serialized cell form (cells are always kept serialized, exactly as they
//! travel on the wire, so reads never re-encode).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CqlError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColType {
    Ascii,
    Bigint,
    Blob,
    Boolean,
    Double,
    Float,
    Int,
    Timestamp,
    Uuid,
    Text,
    Timeuuid,
    Inet,
    Smallint,
    Tinyint,
    List(Box<ColType>),
    Set(Box<ColType>),
    Map(Box<ColType>, Box<ColType>),
}

impl ColType {
    /// Parses a CQL type name such as `int`, `frozen<map<text, text>>`.
    pub fn parse(s: &str) -> Result<ColType, CqlError> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if let Some(inner) = strip_generic(&lower, "frozen") {
            return ColType::parse(inner);
        }
        if let Some(inner) = strip_generic(&lower, "list") {
            return Ok(ColType::List(Box::new(ColType::parse(inner)?)));
        }
        if let Some(inner) = strip_generic(&lower, "set") {
            return Ok(ColType::Set(Box::new(ColType::parse(inner)?)));
        }
        if let Some(inner) = strip_generic(&lower, "map") {
            let (k, v) = split_top_comma(inner)
                .ok_or_else(|| CqlError::syntax(format!("bad map type {s}")))?;
            return Ok(ColType::Map(
                Box::new(ColType::parse(k)?),
                Box::new(ColType::parse(v)?),
            ));
        }
        Ok(match lower.trim_matches('"') {
            "ascii" => ColType::Ascii,
            "bigint" => ColType::Bigint,
            "blob" => ColType::Blob,
            "boolean" => ColType::Boolean,
            "double" => ColType::Double,
            "float" => ColType::Float,
            "int" => ColType::Int,
            "timestamp" => ColType::Timestamp,
            "uuid" => ColType::Uuid,
            "text" | "varchar" => ColType::Text,
            "timeuuid" => ColType::Timeuuid,
            "inet" => ColType::Inet,
            "smallint" => ColType::Smallint,
            "tinyint" => ColType::Tinyint,
            other => return Err(CqlError::invalid(format!("unsupported type {other}"))),
        })
    }

    /// CQL name as stored in `system_schema.columns.type`.
    pub fn cql_name(&self) -> String {
        match self {
            ColType::Ascii => "ascii".into(),
            ColType::Bigint => "bigint".into(),
            ColType::Blob => "blob".into(),
            ColType::Boolean => "boolean".into(),
            ColType::Double => "double".into(),
            ColType::Float => "float".into(),
            ColType::Int => "int".into(),
            ColType::Timestamp => "timestamp".into(),
            ColType::Uuid => "uuid".into(),
            ColType::Text => "text".into(),
            ColType::Timeuuid => "timeuuid".into(),
            ColType::Inet => "inet".into(),
            ColType::Smallint => "smallint".into(),
            ColType::Tinyint => "tinyint".into(),
            ColType::List(t) => format!("frozen<list<{}>>", t.cql_name()),
            ColType::Set(t) => format!("frozen<set<{}>>", t.cql_name()),
            ColType::Map(k, v) => format!("frozen<map<{}, {}>>", k.cql_name(), v.cql_name()),
        }
    }

    /// Writes the `[option]` describing this type in result/prepared metadata.
    pub fn write_option(&self, out: &mut BytesMut) {
        let id: u16 = match self {
            ColType::Ascii => 0x01,
            ColType::Bigint => 0x02,
            ColType::Blob => 0x03,
            ColType::Boolean => 0x04,
            ColType::Double => 0x07,
            ColType::Float => 0x08,
            ColType::Int => 0x09,
            ColType::Timestamp => 0x0B,
            ColType::Uuid => 0x0C,
            ColType::Text => 0x0D,
            ColType::Timeuuid => 0x0F,
            ColType::Inet => 0x10,
            ColType::Smallint => 0x13,
            ColType::Tinyint => 0x14,
            ColType::List(_) => 0x20,
            ColType::Map(_, _) => 0x21,
            ColType::Set(_) => 0x22,
        };
        out.put_u16(id);
        match self {
            ColType::List(t) | ColType::Set(t) => t.write_option(out),
            ColType::Map(k, v) => {
                k.write_option(out);
                v.write_option(out);
            }
            _ => {}
        }
    }

    /// Fixed serialized width, if any; used to reject malformed bound values.
    pub fn fixed_len(&self) -> Option<usize> {
        match self {
            ColType::Bigint | ColType::Double | ColType::Timestamp => Some(8),
            ColType::Int | ColType::Float => Some(4),
            ColType::Uuid | ColType::Timeuuid => Some(16),
            ColType::Smallint => Some(2),
            ColType::Tinyint | ColType::Boolean => Some(1),
            _ => None,
        }
    }

    pub fn validate(&self, v: &[u8]) -> Result<(), CqlError> {
        if let Some(n) = self.fixed_len() {
            if v.len() != n {
                return Err(CqlError::invalid(format!(
                    "expected {n} bytes for a {} value, got {}",
                    self.cql_name(),
                    v.len()
                )));
            }
        }
        if matches!(self, ColType::Text) && std::str::from_utf8(v).is_err() {
            return Err(CqlError::invalid("invalid UTF-8 for a text value"));
        }
        Ok(())
    }
}

fn strip_generic<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(name)?.trim_start();
    let rest = rest.strip_prefix('<')?;
    let rest = rest.trim_end().strip_suffix('>')?;
    Some(rest)
}

fn split_top_comma(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A literal as written in a CQL statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Null,
    Int(i128),
    Float(f64),
    Str(String),
    Bool(bool),
    Hex(Vec<u8>),
    Uuid([u8; 16]),
    List(Vec<Literal>),
    Map(Vec<(Literal, Literal)>),
}

fn bad(lit: &Literal, ty: &ColType) -> CqlError {
    CqlError::invalid(format!(
        "invalid literal {lit:?} for a {} column",
        ty.cql_name()
    ))
}

/// Serializes a literal as a cell of type `ty`; `None` means null.
pub fn literal_to_cell(lit: &Literal, ty: &ColType) -> Result<Option<Bytes>, CqlError> {
    if matches!(lit, Literal::Null) {
        return Ok(None);
    }
    let mut out = BytesMut::new();
    match (ty, lit) {
        (ColType::Int, Literal::Int(i)) => out.put_i32(int_in::<i32>(*i, lit, ty)?),
        (ColType::Bigint, Literal::Int(i)) | (ColType::Timestamp, Literal::Int(i)) => {
            out.put_i64(int_in::<i64>(*i, lit, ty)?)
        }
        (ColType::Smallint, Literal::Int(i)) => out.put_i16(int_in::<i16>(*i, lit, ty)?),
        (ColType::Tinyint, Literal::Int(i)) => out.put_i8(int_in::<i8>(*i, lit, ty)?),
        (ColType::Double, Literal::Int(i)) => out.put_f64(*i as f64),
        (ColType::Double, Literal::Float(f)) => out.put_f64(*f),
        (ColType::Float, Literal::Int(i)) => out.put_f32(*i as f32),
        (ColType::Float, Literal::Float(f)) => out.put_f32(*f as f32),
        (ColType::Boolean, Literal::Bool(b)) => out.put_u8(*b as u8),
        (ColType::Text | ColType::Ascii, Literal::Str(s)) => out.put_slice(s.as_bytes()),
        (ColType::Blob, Literal::Hex(h)) => out.put_slice(h),
        (ColType::Uuid | ColType::Timeuuid, Literal::Uuid(u)) => out.put_slice(u),
        (ColType::Uuid | ColType::Timeuuid, Literal::Str(s)) => {
            let u = uuid::Uuid::parse_str(s).map_err(|_| bad(lit, ty))?;
            out.put_slice(u.as_bytes())
        }
        (ColType::Timestamp, Literal::Str(s)) => {
            out.put_i64(parse_timestamp(s).ok_or_else(|| bad(lit, ty))?)
        }
        (ColType::Inet, Literal::Str(s)) => {
            let ip: std::net::IpAddr = s.parse().map_err(|_| bad(lit, ty))?;
            match ip {
                std::net::IpAddr::V4(v) => out.put_slice(&v.octets()),
                std::net::IpAddr::V6(v) => out.put_slice(&v.octets()),
            }
        }
        (ColType::List(t) | ColType::Set(t), Literal::List(items)) => {
            let cells = items
                .iter()
                .map(|l| literal_to_cell(l, t))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Some(encode_collection(&cells)));
        }
        (ColType::Map(kt, vt), Literal::Map(items)) => {
            let mut cells = Vec::with_capacity(items.len() * 2);
            for (k, v) in items {
                cells.push(literal_to_cell(k, kt)?);
                cells.push(literal_to_cell(v, vt)?);
            }
            let mut out = BytesMut::new();
            out.put_i32(items.len() as i32);
            for c in cells {
                put_cell(&mut out, c.as_deref());
            }
            return Ok(Some(out.freeze()));
        }
        // An empty `{}` parses as a map but is equally an empty set.
        (ColType::Set(_) | ColType::List(_), Literal::Map(items)) if items.is_empty() => {
            return Ok(Some(encode_collection(&[])));
        }
        _ => return Err(bad(lit, ty)),
    }
    Ok(Some(out.freeze()))
}

fn int_in<T: TryFrom<i128>>(i: i128, lit: &Literal, ty: &ColType) -> Result<T, CqlError> {
    T::try_from(i).map_err(|_| bad(lit, ty))
}

/// Accepts `YYYY-MM-DD`, optionally followed by `[ T]HH:MM[:SS[.fff]]` and a
/// trailing `Z`/`+0000`; interpreted as UTC.
fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+0000"))
        .unwrap_or(s);
    let (date, time) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let mut ms = days_from_civil(y, m, day) * 86_400_000;
    if let Some(t) = time {
        let mut parts = t.split(':');
        let h: i64 = parts.next()?.parse().ok()?;
        let mi: i64 = parts.next()?.parse().ok()?;
        let sec: f64 = parts.next().map(|x| x.parse().ok()).unwrap_or(Some(0.0))?;
        ms += h * 3_600_000 + mi * 60_000 + (sec * 1000.0).round() as i64;
    }
    Some(ms)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn put_cell(out: &mut BytesMut, cell: Option<&[u8]>) {
    match cell {
        Some(b) => {
            out.put_i32(b.len() as i32);
            out.put_slice(b);
        }
        None => out.put_i32(-1),
    }
}

pub fn encode_collection(cells: &[Option<Bytes>]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i32(cells.len() as i32);
    for c in cells {
        put_cell(&mut out, c.as_deref());
    }
    out.freeze()
}

/// Splits a serialized list/set value into its element cells.
pub fn decode_collection(v: &[u8]) -> Result<Vec<Option<Bytes>>, CqlError> {
    let err = || CqlError::invalid("malformed collection value");
    if v.len() < 4 {
        return Err(err());
    }
    let n = i32::from_be_bytes(v[..4].try_into().unwrap());
    let mut pos = 4;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let len = i32::from_be_bytes(v.get(pos..pos + 4).ok_or_else(err)?.try_into().unwrap());
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let e = v.get(pos..pos + len as usize).ok_or_else(err)?;
            out.push(Some(Bytes::copy_from_slice(e)));
            pos += len as usize;
        }
    }
    Ok(out)
}

/// Convenience constructors for system-table cells.
pub fn text_cell(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

pub fn int_cell(i: i32) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&i.to_be_bytes()))
}

pub fn bool_cell(b: bool) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&[b as u8]))
}

pub fn double_cell(f: f64) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&f.to_be_bytes()))
}

pub fn uuid_cell(u: &uuid::Uuid) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(u.as_bytes()))
}

pub fn inet_cell(ip: std::net::Ipv4Addr) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&ip.octets()))
}

pub fn text_list_cell<S: AsRef<str>>(items: &[S]) -> Option<Bytes> {
    let cells: Vec<Option<Bytes>> = items.iter().map(|s| text_cell(s.as_ref())).collect();
    Some(encode_collection(&cells))
}

pub fn text_map_cell<K: AsRef<str>, V: AsRef<str>>(items: &[(K, V)]) -> Option<Bytes> {
    let mut out = BytesMut::new();
    out.put_i32(items.len() as i32);
    for (k, v) in items {
        put_cell(&mut out, Some(k.as_ref().as_bytes()));
        put_cell(&mut out, Some(v.as_ref().as_bytes()));
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types() {
        assert_eq!(ColType::parse("INT").unwrap(), ColType::Int);
        assert_eq!(
            ColType::parse("frozen<map<text, text>>").unwrap(),
            ColType::Map(Box::new(ColType::Text), Box::new(ColType::Text))
        );
        assert_eq!(ColType::parse("varchar").unwrap(), ColType::Text);
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(
            parse_timestamp("2000-03-01 00:00:01"),
            Some(951_868_801_000)
        );
    }
}
