//! Data file: a length-prefixed binary dump of all user keyspaces, so a
//! restarted server comes back with the same tables.
//!
//! Layout (big-endian): magic, u32 keyspace count, then per keyspace its
//! name, durable_writes, replication map and tables; per table its name,
//! columns (name, CQL type; the partition key first) and rows, each cell
//! an i32 length (-1 for null) followed by its bytes.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::error::ServerError;
use crate::store::{Catalog, Column, Row, Table, TableSchema};
use crate::types::ColType;

const MAGIC: &[u8; 8] = b"CRS4CQL1";

pub fn save(catalog: &Catalog, path: &Path) -> Result<(), ServerError> {
    let tmp = path.with_extension("tmp");
    {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        let kss = catalog.keyspaces.read().unwrap();
        w.write_all(&(kss.len() as u32).to_be_bytes())?;
        for ks in kss.values() {
            put_str(&mut w, &ks.name)?;
            w.write_all(&[ks.durable_writes as u8])?;
            w.write_all(&(ks.replication.len() as u32).to_be_bytes())?;
            for (k, v) in &ks.replication {
                put_str(&mut w, k)?;
                put_str(&mut w, v)?;
            }
            w.write_all(&(ks.tables.len() as u32).to_be_bytes())?;
            for t in ks.tables.values() {
                let s = &t.schema;
                put_str(&mut w, &s.name)?;
                w.write_all(&(s.columns.len() as u32).to_be_bytes())?;
                for c in &s.columns {
                    put_str(&mut w, &c.name)?;
                    put_str(&mut w, &c.ty.cql_name())?;
                }
                let rows = t.rows.read().unwrap();
                w.write_all(&(rows.len() as u64).to_be_bytes())?;
                for r in rows.values() {
                    for cell in r.iter() {
                        match cell {
                            Some(b) => {
                                w.write_all(&(b.len() as i32).to_be_bytes())?;
                                w.write_all(b)?;
                            }
                            None => w.write_all(&(-1i32).to_be_bytes())?,
                        }
                    }
                }
            }
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn put_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u32).to_be_bytes())?;
    w.write_all(s.as_bytes())
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), ServerError> {
        if self.buf.remaining() < n {
            Err(ServerError::DataFile("truncated data file".into()))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, ServerError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self) -> Result<u32, ServerError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, ServerError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, ServerError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self) -> Result<String, ServerError> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| ServerError::DataFile(e.to_string()))
    }
}

/// Loads a data file into an empty catalog. Cells share the file buffer.
pub fn load(catalog: &Catalog, path: &Path) -> Result<(), ServerError> {
    let data = Bytes::from(std::fs::read(path)?);
    if data.len() < 8 || &data[..8] != MAGIC {
        return Err(ServerError::DataFile(format!(
            "{} is not a crs4-cqlserver data file",
            path.display()
        )));
    }
    let mut r = Reader {
        buf: data.slice(8..),
    };
    let nks = r.u32()?;
    for _ in 0..nks {
        let name = r.string()?;
        let durable = r.u8()? != 0;
        let nrep = r.u32()?;
        let mut replication = Vec::new();
        for _ in 0..nrep {
            replication.push((r.string()?, r.string()?));
        }
        catalog.create_keyspace(&name, replication, durable);
        let ntables = r.u32()?;
        for _ in 0..ntables {
            let tname = r.string()?;
            let ncols = r.u32()? as usize;
            let mut columns = Vec::with_capacity(ncols);
            for _ in 0..ncols {
                let cname = r.string()?;
                let ty = ColType::parse(&r.string()?)
                    .map_err(|e| ServerError::DataFile(e.to_string()))?;
                columns.push(Column { name: cname, ty });
            }
            let pk = columns
                .first()
                .map(|c| c.name.clone())
                .ok_or_else(|| ServerError::DataFile("table without columns".into()))?;
            let schema = TableSchema::new(&name, &tname, columns, &pk);
            let table = Table::new(schema);
            let nrows = r.u64()?;
            for _ in 0..nrows {
                let mut cells = Vec::with_capacity(ncols);
                for _ in 0..ncols {
                    let len = r.u32()? as i32;
                    cells.push(if len < 0 {
                        None
                    } else {
                        Some(r.bytes(len as usize)?)
                    });
                }
                let row: Row = Arc::from(cells);
                table.insert_row(row);
            }
            let mut kss = catalog.keyspaces.write().unwrap();
            if let Some(ks) = kss.get_mut(&name) {
                ks.tables.insert(tname, Arc::new(table));
            }
        }
    }
    catalog.bump_version();
    Ok(())
}
