//! Statement execution and RESULT encoding.

use std::ops::Bound;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::cql::{self, InValues, Op, Parsed, Rel, Select, Selector, Stmt, Term};
use crate::error::CqlError;
use crate::proto::{is_shared, put_bytes, put_short_bytes, put_string, FrameBuf};
use crate::server::Shared;
use crate::store::{is_system_keyspace, token_of, Column, Row, RowKey, Table, TableSchema};
use crate::system;
use crate::types::{decode_collection, literal_to_cell, ColType, Literal};

#[derive(Clone, Debug)]
pub struct ColSpec {
    pub keyspace: String,
    pub table: String,
    pub name: String,
    pub ty: ColType,
}

#[derive(Clone, Copy, Debug)]
pub enum Proj {
    Cell(usize),
    Token(usize),
}

pub struct Rows {
    pub specs: Arc<Vec<ColSpec>>,
    pub proj: Vec<Proj>,
    pub rows: Vec<Row>,
    pub paging_state: Option<Vec<u8>>,
}

pub enum Outcome {
    Void,
    Rows(Rows),
    SetKeyspace(String),
    SchemaChange {
        change: &'static str,
        target: &'static str,
        keyspace: String,
        name: Option<String>,
    },
    Prepared(Arc<Prepared>),
}

/// A prepared statement with its keyspace already resolved.
pub struct Prepared {
    pub id: [u8; 16],
    pub parsed: Parsed,
    pub keyspace: Option<String>,
    pub bind_specs: Vec<ColSpec>,
    pub pk_indexes: Vec<u16>,
    pub result_specs: Option<Arc<Vec<ColSpec>>>,
}

/// A bound value: `None` is "unset", `Some(None)` is null.
pub type Bound_ = Option<Option<Bytes>>;

pub struct Ctx<'a> {
    pub shared: &'a Shared,
    pub node: usize,
    pub keyspace: Option<String>,
}

enum TableRef {
    User(Arc<Table>),
    System(Arc<TableSchema>),
}

impl TableRef {
    fn schema(&self) -> &Arc<TableSchema> {
        match self {
            TableRef::User(t) => &t.schema,
            TableRef::System(s) => s,
        }
    }
}

/// Whether a statement reads or writes a user (non-system) table; only
/// those are subject to error injection.
pub fn targets_user_table(stmt: &Stmt, conn_ks: Option<&str>) -> bool {
    let t = match stmt {
        Stmt::Select(s) => &s.table,
        Stmt::Insert { table, .. } | Stmt::Delete { table, .. } => table,
        _ => return false,
    };
    match t.keyspace.as_deref().or(conn_ks) {
        Some(ks) => !is_system_keyspace(ks),
        None => false,
    }
}

impl Ctx<'_> {
    fn ks_of(&self, q: &cql::QualName) -> Result<String, CqlError> {
        q.keyspace.clone().or_else(|| self.keyspace.clone()).ok_or_else(|| {
            CqlError::invalid(
                "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename",
            )
        })
    }

    fn table(&self, q: &cql::QualName) -> Result<TableRef, CqlError> {
        let ks = self.ks_of(q)?;
        if is_system_keyspace(&ks) {
            return system::schema_of(&ks, &q.name)
                .map(TableRef::System)
                .ok_or_else(|| CqlError::invalid(format!("unconfigured table {}", q.name)));
        }
        self.shared.catalog.table(&ks, &q.name).map(TableRef::User)
    }

    pub fn execute(
        &self,
        parsed: &Parsed,
        values: &[Bound_],
        page_size: Option<i32>,
        paging_state: Option<&[u8]>,
    ) -> Result<Outcome, CqlError> {
        let val = |t: &Term| -> Result<Option<Bytes>, CqlError> {
            match t {
                Term::Bind(i) => match values.get(*i) {
                    Some(v) => Ok(v.clone().flatten()),
                    None => Err(CqlError::invalid(format!(
                        "there were {} markers(?) in CQL but {} bound variables",
                        parsed.bind_names.len(),
                        values.len()
                    ))),
                },
                Term::Lit(_) => unreachable!("literals are converted by the caller"),
            }
        };
        let cat = &self.shared.catalog;
        match &parsed.stmt {
            Stmt::Use(ks) => {
                if !cat.has_keyspace(ks) && !is_system_keyspace(ks) {
                    return Err(CqlError::invalid(format!("Keyspace '{ks}' does not exist")));
                }
                Ok(Outcome::SetKeyspace(ks.clone()))
            }
            Stmt::CreateKeyspace {
                name,
                if_not_exists,
                replication,
                durable_writes,
            } => {
                if is_system_keyspace(name) {
                    return Err(CqlError::invalid(format!("{name} is a reserved keyspace")));
                }
                if cat.create_keyspace(name, replication.clone(), *durable_writes) {
                    Ok(schema_change("CREATED", "KEYSPACE", name, None))
                } else if *if_not_exists {
                    Ok(Outcome::Void)
                } else {
                    Err(CqlError::AlreadyExists {
                        keyspace: name.clone(),
                        table: String::new(),
                    })
                }
            }
            Stmt::DropKeyspace { name, if_exists } => {
                if cat.drop_keyspace(name) {
                    Ok(schema_change("DROPPED", "KEYSPACE", name, None))
                } else if *if_exists {
                    Ok(Outcome::Void)
                } else {
                    Err(CqlError::invalid(format!(
                        "Cannot drop non existing keyspace '{name}'."
                    )))
                }
            }
            Stmt::CreateTable {
                table,
                if_not_exists,
                columns,
                partition_key,
            } => {
                let ks = self.ks_of(table)?;
                if is_system_keyspace(&ks) {
                    return Err(CqlError::invalid(format!("{ks} is a reserved keyspace")));
                }
                let cols = columns
                    .iter()
                    .map(|(n, t)| Column {
                        name: n.clone(),
                        ty: t.clone(),
                    })
                    .collect();
                let schema = TableSchema::new(&ks, &table.name, cols, partition_key);
                if cat.create_table(schema)? {
                    Ok(schema_change("CREATED", "TABLE", &ks, Some(&table.name)))
                } else if *if_not_exists {
                    Ok(Outcome::Void)
                } else {
                    Err(CqlError::AlreadyExists {
                        keyspace: ks,
                        table: table.name.clone(),
                    })
                }
            }
            Stmt::DropTable { table, if_exists } => {
                let ks = self.ks_of(table)?;
                match cat.drop_table(&ks, &table.name) {
                    Ok(true) => Ok(schema_change("DROPPED", "TABLE", &ks, Some(&table.name))),
                    Ok(false) | Err(_) if *if_exists => Ok(Outcome::Void),
                    Ok(false) => Err(CqlError::invalid(format!(
                        "Table '{ks}.{}' doesn't exist",
                        table.name
                    ))),
                    Err(e) => Err(e),
                }
            }
            Stmt::Truncate(table) => match self.table(table)? {
                TableRef::User(t) => {
                    t.rows.write().unwrap().clear();
                    Ok(Outcome::Void)
                }
                TableRef::System(_) => Err(CqlError::invalid("cannot truncate a system table")),
            },
            Stmt::Insert {
                table,
                columns,
                values: terms,
                ..
            } => {
                let t = match self.table(table)? {
                    TableRef::User(t) => t,
                    TableRef::System(_) => {
                        return Err(CqlError::invalid("cannot modify a system table"))
                    }
                };
                let s = &t.schema;
                let mut cells: Vec<Option<Option<Bytes>>> = vec![None; s.columns.len()];
                for (name, term) in columns.iter().zip(terms) {
                    let idx = s.column_index(name).ok_or_else(|| {
                        CqlError::invalid(format!("Undefined column name {name}"))
                    })?;
                    let ty = &s.columns[idx].ty;
                    cells[idx] = match term {
                        Term::Lit(l) => Some(literal_to_cell(l, ty)?),
                        Term::Bind(i) => match values.get(*i) {
                            Some(Some(v)) => {
                                if let Some(b) = v {
                                    ty.validate(b)?;
                                }
                                Some(v.clone())
                            }
                            Some(None) => None,
                            None => {
                                val(term)?;
                                None
                            }
                        },
                    };
                }
                let key = match cells[0].clone().flatten() {
                    Some(k) if !k.is_empty() => k,
                    _ => {
                        return Err(CqlError::invalid(format!(
                            "Invalid null value in condition for column {}",
                            s.columns[0].name
                        )))
                    }
                };
                t.upsert(key, cells);
                Ok(Outcome::Void)
            }
            Stmt::Delete { table, rels } => {
                let t = match self.table(table)? {
                    TableRef::User(t) => t,
                    TableRef::System(_) => {
                        return Err(CqlError::invalid("cannot modify a system table"))
                    }
                };
                let w = Where::build(&t.schema, rels, &val)?;
                match w.keys {
                    Some(keys) => {
                        for k in keys {
                            t.delete(&k);
                        }
                        Ok(Outcome::Void)
                    }
                    None => Err(CqlError::invalid(
                        "DELETE requires the partition key to be restricted by = or IN",
                    )),
                }
            }
            Stmt::Select(sel) => self
                .select(sel, &val, page_size, paging_state)
                .map(Outcome::Rows),
        }
    }

    fn select(
        &self,
        sel: &Select,
        val: &dyn Fn(&Term) -> Result<Option<Bytes>, CqlError>,
        page_size: Option<i32>,
        paging_state: Option<&[u8]>,
    ) -> Result<Rows, CqlError> {
        let tref = self.table(&sel.table)?;
        let schema = tref.schema().clone();
        let (specs, proj, count) = projection(&schema, &sel.selectors)?;
        let w = Where::build(&schema, &sel.rels, val)?;
        let limit = match &sel.limit {
            None => usize::MAX,
            Some(t) => {
                let v = val(t)?.ok_or_else(|| CqlError::invalid("LIMIT must not be null"))?;
                let n = i32::from_be_bytes(
                    v[..]
                        .try_into()
                        .map_err(|_| CqlError::invalid("LIMIT must be an int"))?,
                );
                if n <= 0 {
                    return Err(CqlError::invalid("LIMIT must be strictly positive"));
                }
                n as usize
            }
        };
        let page = match page_size {
            Some(p) if p > 0 && !count => p as usize,
            _ => usize::MAX,
        };
        let specs = Arc::new(specs);
        match tref {
            TableRef::System(_) => {
                if w.lo != Bound::Unbounded || w.hi != Bound::Unbounded {
                    return Err(CqlError::invalid("token restrictions on system tables"));
                }
                let mut rows: Vec<Row> =
                    system::rows_of(self.shared, self.node, &schema.keyspace, &schema.name)
                        .into_iter()
                        .filter(|r| w.matches(r))
                        .collect();
                if let Some(keys) = &w.keys {
                    rows.retain(|r| r[0].as_ref().is_some_and(|k| keys.contains(k)));
                }
                if count {
                    return Ok(count_rows(specs, rows.len().min(limit)));
                }
                let offset = match paging_state {
                    Some([2, rest @ ..]) if rest.len() == 8 => {
                        u64::from_be_bytes(rest.try_into().unwrap()) as usize
                    }
                    None => 0,
                    Some(_) => return Err(CqlError::Protocol("invalid paging state".into())),
                };
                let end = rows.len().min(limit);
                let start = offset.min(end);
                let stop = start.saturating_add(page).min(end);
                let paging_state = (stop < end).then(|| {
                    let mut s = vec![2u8];
                    s.extend_from_slice(&(stop as u64).to_be_bytes());
                    s
                });
                let rows = rows[start..stop].to_vec();
                Ok(Rows {
                    specs,
                    proj,
                    rows,
                    paging_state,
                })
            }
            TableRef::User(t) => {
                let (after, returned) = match paging_state {
                    None => (None, 0u64),
                    Some(ps) => {
                        let (k, n) = decode_cursor(ps)?;
                        (Some(k), n)
                    }
                };
                let remaining = limit.saturating_sub(returned as usize);
                let max = if count {
                    usize::MAX
                } else {
                    page.min(remaining)
                };
                let filter = |r: &Row| w.matches(r);
                let (found, more): (Vec<(RowKey, Row)>, bool) = match &w.keys {
                    Some(keys) => {
                        let mut ks: Vec<RowKey> = keys
                            .iter()
                            .map(|k| (token_of(k), k.clone()))
                            .filter(|k| in_bounds(k, &w.lo, &w.hi))
                            .filter(|k| after.as_ref().is_none_or(|a| k > a))
                            .collect();
                        ks.sort();
                        ks.dedup();
                        let rows = t.rows.read().unwrap();
                        let mut out = Vec::new();
                        let mut more = false;
                        for k in ks {
                            if let Some(r) = rows.get(&k) {
                                if !filter(r) {
                                    continue;
                                }
                                if out.len() == max {
                                    more = true;
                                    break;
                                }
                                out.push((k, r.clone()));
                            }
                        }
                        (out, more)
                    }
                    None => {
                        let lo = match after {
                            Some(a) => tighter_lo(w.lo.clone(), Bound::Excluded(a)),
                            None => w.lo.clone(),
                        };
                        t.scan(lo, w.hi.clone(), max, &filter)
                    }
                };
                if count {
                    return Ok(count_rows(specs, found.len().min(limit)));
                }
                let n = found.len() as u64;
                let paging_state = if more && (returned + n) < limit as u64 {
                    found.last().map(|(k, _)| encode_cursor(k, returned + n))
                } else {
                    None
                };
                Ok(Rows {
                    specs,
                    proj,
                    rows: found.into_iter().map(|(_, r)| r).collect(),
                    paging_state,
                })
            }
        }
    }

    /// Builds a prepared statement: bind metadata, pk indexes, result metadata.
    pub fn prepare(&self, query: &str) -> Result<Prepared, CqlError> {
        let mut parsed = cql::parse(query)?;
        let ks_for_id = self.keyspace.clone().unwrap_or_default();
        let id = statement_id(&ks_for_id, query);
        let nbinds = parsed.bind_names.len();
        let mut bind_specs: Vec<Option<ColSpec>> = vec![None; nbinds];
        let mut pk_indexes = Vec::new();
        let mut result_specs = None;
        // Pin the keyspace so later executions don't depend on the connection's.
        let pin = |q: &mut cql::QualName| -> Result<(), CqlError> {
            if q.keyspace.is_none() {
                q.keyspace = Some(self.ks_of(q)?);
            }
            Ok(())
        };
        match &mut parsed.stmt {
            Stmt::Insert {
                table,
                columns,
                values,
                ..
            } => {
                pin(table)?;
                let tref = self.table(table)?;
                let s = tref.schema();
                for (c, v) in columns.iter().zip(values.iter()) {
                    let idx = s
                        .column_index(c)
                        .ok_or_else(|| CqlError::invalid(format!("Undefined column name {c}")))?;
                    if let Term::Bind(b) = v {
                        bind_specs[*b] = Some(spec(s, c, s.columns[idx].ty.clone()));
                        if idx == 0 {
                            pk_indexes.push(*b as u16);
                        }
                    }
                }
            }
            Stmt::Select(sel) => {
                pin(&mut sel.table)?;
                let tref = self.table(&sel.table)?;
                let s = tref.schema();
                rel_binds(s, &sel.rels, &mut bind_specs, &mut pk_indexes)?;
                if let Some(Term::Bind(b)) = &sel.limit {
                    bind_specs[*b] = Some(spec(s, "[limit]", ColType::Int));
                }
                let (specs, _, _) = projection(s, &sel.selectors)?;
                result_specs = Some(Arc::new(specs));
            }
            Stmt::Delete { table, rels } => {
                pin(table)?;
                let tref = self.table(table)?;
                rel_binds(tref.schema(), rels, &mut bind_specs, &mut pk_indexes)?;
            }
            _ => {
                if nbinds > 0 {
                    return Err(CqlError::invalid("bind markers are not supported here"));
                }
            }
        }
        let bind_specs = bind_specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.ok_or_else(|| CqlError::invalid(format!("cannot infer the type of marker {i}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Named markers take the names given in the query.
        let bind_specs = bind_specs
            .into_iter()
            .zip(parsed.bind_names.iter())
            .map(|(mut s, n)| {
                if let Some(n) = n {
                    s.name = n.clone();
                }
                s
            })
            .collect();
        Ok(Prepared {
            id,
            keyspace: self.keyspace.clone(),
            parsed,
            bind_specs,
            pk_indexes,
            result_specs,
        })
    }
}

/// Turns literals into bind-like values so execution has one path. Returns
/// the statement with literals replaced by extra binds after the user's.
pub fn inline_literals(
    parsed: &Parsed,
    user_values: Vec<Bound_>,
    shared_ks: Option<&str>,
    ctx: &Ctx<'_>,
) -> Result<(Parsed, Vec<Bound_>), CqlError> {
    let _ = shared_ks;
    let mut values = user_values;
    let mut p = parsed.clone();
    let schema: Option<Arc<TableSchema>> = match &p.stmt {
        Stmt::Insert { table, .. } | Stmt::Delete { table, .. } => {
            ctx.table(table).ok().map(|t| t.schema().clone())
        }
        Stmt::Select(s) => ctx.table(&s.table).ok().map(|t| t.schema().clone()),
        _ => None,
    };
    let Some(schema) = schema else {
        return Ok((p, values));
    };
    let ty_of = |c: &str| -> Result<ColType, CqlError> {
        schema
            .column_index(c)
            .map(|i| schema.columns[i].ty.clone())
            .ok_or_else(|| CqlError::invalid(format!("Undefined column name {c}")))
    };
    let mut conv = |t: &mut Term, ty: &ColType| -> Result<(), CqlError> {
        if let Term::Lit(l) = t {
            let cell = literal_to_cell(l, ty)?;
            values.push(Some(cell));
            *t = Term::Bind(values.len() - 1);
        }
        Ok(())
    };
    match &mut p.stmt {
        Stmt::Insert {
            columns,
            values: terms,
            ..
        } => {
            for (c, t) in columns.iter().zip(terms.iter_mut()) {
                conv(t, &ty_of(c)?)?;
            }
        }
        Stmt::Select(Select { rels, limit, .. }) => {
            conv_rels(rels, &ty_of, &mut conv)?;
            if let Some(t) = limit {
                if let Term::Lit(Literal::Int(_)) = t {
                    conv(t, &ColType::Int)?;
                }
            }
        }
        Stmt::Delete { rels, .. } => conv_rels(rels, &ty_of, &mut conv)?,
        _ => {}
    }
    Ok((p, values))
}

fn conv_rels(
    rels: &mut [Rel],
    ty_of: &dyn Fn(&str) -> Result<ColType, CqlError>,
    conv: &mut dyn FnMut(&mut Term, &ColType) -> Result<(), CqlError>,
) -> Result<(), CqlError> {
    for r in rels.iter_mut() {
        match r {
            Rel::Eq(c, t) => conv(t, &ty_of(c)?)?,
            Rel::In(c, InValues::List(ts)) => {
                let ty = ty_of(c)?;
                for t in ts {
                    conv(t, &ty)?;
                }
            }
            Rel::In(_, InValues::Bind(_)) => {}
            Rel::Token(_, _, t) => conv(t, &ColType::Bigint)?,
        }
    }
    Ok(())
}

fn rel_binds(
    s: &TableSchema,
    rels: &[Rel],
    bind_specs: &mut [Option<ColSpec>],
    pk_indexes: &mut Vec<u16>,
) -> Result<(), CqlError> {
    for r in rels {
        match r {
            Rel::Eq(c, t) => {
                let idx = s
                    .column_index(c)
                    .ok_or_else(|| CqlError::invalid(format!("Undefined column name {c}")))?;
                if let Term::Bind(b) = t {
                    bind_specs[*b] = Some(spec(s, c, s.columns[idx].ty.clone()));
                    if idx == 0 {
                        pk_indexes.push(*b as u16);
                    }
                }
            }
            Rel::In(c, vals) => {
                let idx = s
                    .column_index(c)
                    .ok_or_else(|| CqlError::invalid(format!("Undefined column name {c}")))?;
                let ty = s.columns[idx].ty.clone();
                match vals {
                    InValues::Bind(b) => {
                        bind_specs[*b] =
                            Some(spec(s, &format!("in({c})"), ColType::List(Box::new(ty))))
                    }
                    InValues::List(ts) => {
                        for t in ts {
                            if let Term::Bind(b) = t {
                                bind_specs[*b] = Some(spec(s, c, ty.clone()));
                            }
                        }
                    }
                }
            }
            Rel::Token(_, _, t) => {
                if let Term::Bind(b) = t {
                    bind_specs[*b] = Some(spec(s, "partition key token", ColType::Bigint));
                }
            }
        }
    }
    Ok(())
}

fn spec(s: &TableSchema, name: &str, ty: ColType) -> ColSpec {
    ColSpec {
        keyspace: s.keyspace.clone(),
        table: s.name.clone(),
        name: name.to_string(),
        ty,
    }
}

fn statement_id(ks: &str, query: &str) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, ks, query).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    out
}

fn schema_change(
    change: &'static str,
    target: &'static str,
    ks: &str,
    name: Option<&str>,
) -> Outcome {
    Outcome::SchemaChange {
        change,
        target,
        keyspace: ks.to_string(),
        name: name.map(str::to_string),
    }
}

fn projection(
    s: &TableSchema,
    selectors: &[(Selector, Option<String>)],
) -> Result<(Vec<ColSpec>, Vec<Proj>, bool), CqlError> {
    let mut specs = Vec::new();
    let mut proj = Vec::new();
    let mut count = false;
    for (sel, alias) in selectors {
        match sel {
            Selector::Star => {
                for (i, c) in s.columns.iter().enumerate() {
                    specs.push(spec(s, &c.name, c.ty.clone()));
                    proj.push(Proj::Cell(i));
                }
            }
            Selector::Column(c) => {
                let idx = s
                    .column_index(c)
                    .ok_or_else(|| CqlError::invalid(format!("Undefined column name {c}")))?;
                specs.push(spec(
                    s,
                    alias.as_deref().unwrap_or(c),
                    s.columns[idx].ty.clone(),
                ));
                proj.push(Proj::Cell(idx));
            }
            Selector::Token(cols) => {
                if cols.len() != 1 || cols[0] != s.columns[0].name {
                    return Err(CqlError::invalid(
                        "token() must be applied to the partition key",
                    ));
                }
                let name = alias
                    .clone()
                    .unwrap_or_else(|| format!("system.token({})", cols[0]));
                specs.push(spec(s, &name, ColType::Bigint));
                proj.push(Proj::Token(0));
            }
            Selector::CountStar => {
                specs.push(spec(
                    s,
                    alias.as_deref().unwrap_or("count"),
                    ColType::Bigint,
                ));
                proj.push(Proj::Cell(0));
                count = true;
            }
        }
    }
    if count && specs.len() != 1 {
        return Err(CqlError::invalid(
            "count(*) cannot be mixed with other selectors",
        ));
    }
    Ok((specs, proj, count))
}

fn count_rows(specs: Arc<Vec<ColSpec>>, n: usize) -> Rows {
    let row: Row = Arc::from(vec![Some(Bytes::copy_from_slice(
        &(n as i64).to_be_bytes(),
    ))]);
    Rows {
        specs,
        proj: vec![Proj::Cell(0)],
        rows: vec![row],
        paging_state: None,
    }
}

/// WHERE clause reduced to: partition keys (from `=`/`IN` on the key), a
/// token range, and equality filters on other columns.
struct Where {
    keys: Option<Vec<Bytes>>,
    lo: Bound<RowKey>,
    hi: Bound<RowKey>,
    filters: Vec<(usize, Vec<Option<Bytes>>)>,
}

impl Where {
    fn build(
        s: &TableSchema,
        rels: &[Rel],
        val: &dyn Fn(&Term) -> Result<Option<Bytes>, CqlError>,
    ) -> Result<Where, CqlError> {
        let mut w = Where {
            keys: None,
            lo: Bound::Unbounded,
            hi: Bound::Unbounded,
            filters: Vec::new(),
        };
        for r in rels {
            let (col, vals): (&str, Vec<Option<Bytes>>) = match r {
                Rel::Eq(c, t) => (c, vec![val(t)?]),
                Rel::In(c, InValues::List(ts)) => {
                    (c, ts.iter().map(val).collect::<Result<Vec<_>, _>>()?)
                }
                Rel::In(c, InValues::Bind(b)) => {
                    let v = val(&Term::Bind(*b))?
                        .ok_or_else(|| CqlError::invalid("IN list must not be null"))?;
                    (c, decode_collection(&v)?)
                }
                Rel::Token(cols, op, t) => {
                    if cols.len() != 1 || cols[0] != s.columns[0].name {
                        return Err(CqlError::invalid(
                            "token() must be applied to the partition key",
                        ));
                    }
                    let v = val(t)?.ok_or_else(|| CqlError::invalid("null token bound"))?;
                    let tok = i64::from_be_bytes(
                        v[..]
                            .try_into()
                            .map_err(|_| CqlError::invalid("token bound must be a bigint"))?,
                    );
                    let empty = Bytes::new;
                    let (lo, hi) = match op {
                        Op::Gt => (
                            tok.checked_add(1)
                                .map_or(Bound::Excluded((i64::MAX, max_key())), |t| {
                                    Bound::Included((t, empty()))
                                }),
                            Bound::Unbounded,
                        ),
                        Op::Ge => (Bound::Included((tok, empty())), Bound::Unbounded),
                        Op::Lt => (Bound::Unbounded, Bound::Excluded((tok, empty()))),
                        Op::Le => (
                            Bound::Unbounded,
                            tok.checked_add(1)
                                .map_or(Bound::Unbounded, |t| Bound::Excluded((t, empty()))),
                        ),
                        Op::Eq => (
                            Bound::Included((tok, empty())),
                            tok.checked_add(1)
                                .map_or(Bound::Unbounded, |t| Bound::Excluded((t, empty()))),
                        ),
                    };
                    if lo != Bound::Unbounded {
                        w.lo = tighter_lo(w.lo, lo);
                    }
                    if hi != Bound::Unbounded {
                        w.hi = tighter_hi(w.hi, hi);
                    }
                    continue;
                }
            };
            let idx = s
                .column_index(col)
                .ok_or_else(|| CqlError::invalid(format!("Undefined column name {col}")))?;
            if idx == 0 && s.id != uuid::Uuid::nil() {
                let ks: Vec<Bytes> = vals.into_iter().flatten().collect();
                w.keys = Some(match w.keys.take() {
                    None => ks,
                    Some(prev) => prev.into_iter().filter(|k| ks.contains(k)).collect(),
                });
            } else {
                w.filters.push((idx, vals));
            }
        }
        Ok(w)
    }

    fn matches(&self, r: &Row) -> bool {
        self.filters
            .iter()
            .all(|(i, vals)| r[*i].is_some() && vals.iter().any(|v| v.is_some() && *v == r[*i]))
    }
}

/// A key greater than any real key with the same token (keys are at most
/// 64 KiB), used to exclude a whole token.
fn max_key() -> Bytes {
    Bytes::from(vec![0xFF; 65_537])
}

fn in_bounds(k: &RowKey, lo: &Bound<RowKey>, hi: &Bound<RowKey>) -> bool {
    (match lo {
        Bound::Included(l) => k >= l,
        Bound::Excluded(l) => k > l,
        Bound::Unbounded => true,
    }) && (match hi {
        Bound::Included(h) => k <= h,
        Bound::Excluded(h) => k < h,
        Bound::Unbounded => true,
    })
}

fn tighter_lo(a: Bound<RowKey>, b: Bound<RowKey>) -> Bound<RowKey> {
    use Bound::*;
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => {
            if x > y {
                a
            } else if y > x {
                b
            } else if matches!(a, Excluded(_)) {
                a
            } else {
                b
            }
        }
    }
}

fn tighter_hi(a: Bound<RowKey>, b: Bound<RowKey>) -> Bound<RowKey> {
    use Bound::*;
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => {
            if x < y {
                a
            } else if y < x {
                b
            } else if matches!(a, Excluded(_)) {
                a
            } else {
                b
            }
        }
    }
}

fn encode_cursor(k: &RowKey, returned: u64) -> Vec<u8> {
    let mut s = Vec::with_capacity(1 + 8 + 4 + k.1.len() + 8);
    s.push(1u8);
    s.extend_from_slice(&k.0.to_be_bytes());
    s.extend_from_slice(&(k.1.len() as u32).to_be_bytes());
    s.extend_from_slice(&k.1);
    s.extend_from_slice(&returned.to_be_bytes());
    s
}

fn decode_cursor(ps: &[u8]) -> Result<(RowKey, u64), CqlError> {
    let bad = || CqlError::Protocol("invalid paging state".into());
    if ps.first() != Some(&1) || ps.len() < 21 {
        return Err(bad());
    }
    let tok = i64::from_be_bytes(ps[1..9].try_into().unwrap());
    let len = u32::from_be_bytes(ps[9..13].try_into().unwrap()) as usize;
    if ps.len() != 13 + len + 8 {
        return Err(bad());
    }
    let key = Bytes::copy_from_slice(&ps[13..13 + len]);
    let n = u64::from_be_bytes(ps[13 + len..].try_into().unwrap());
    Ok(((tok, key), n))
}

// ---- RESULT encoding ----

const KIND_VOID: i32 = 1;
const KIND_ROWS: i32 = 2;
const KIND_SET_KEYSPACE: i32 = 3;
const KIND_PREPARED: i32 = 4;
const KIND_SCHEMA_CHANGE: i32 = 5;

fn write_metadata(
    out: &mut BytesMut,
    specs: &[ColSpec],
    paging_state: Option<&[u8]>,
    no_metadata: bool,
) {
    let global = !specs.is_empty()
        && specs
            .iter()
            .all(|s| s.keyspace == specs[0].keyspace && s.table == specs[0].table);
    let mut flags = 0i32;
    if global && !no_metadata {
        flags |= 0x0001;
    }
    if paging_state.is_some() {
        flags |= 0x0002;
    }
    if no_metadata {
        flags |= 0x0004;
    }
    out.put_i32(flags);
    out.put_i32(specs.len() as i32);
    if let Some(ps) = paging_state {
        put_bytes(out, Some(ps));
    }
    if no_metadata {
        return;
    }
    write_specs(out, specs, global);
}

fn write_specs(out: &mut BytesMut, specs: &[ColSpec], global: bool) {
    if global {
        put_string(out, &specs[0].keyspace);
        put_string(out, &specs[0].table);
    }
    for s in specs {
        if !global {
            put_string(out, &s.keyspace);
            put_string(out, &s.table);
        }
        put_string(out, &s.name);
        s.ty.write_option(out);
    }
}

/// Upper bound on the bytes the frame's own buffer needs (cells sent by
/// reference not included), so that it is allocated once.
pub fn rows_size_hint(rows: &Rows) -> usize {
    let mut n = 64 + rows.specs.len() * 48;
    for r in &rows.rows {
        for p in &rows.proj {
            n += 4 + match p {
                Proj::Cell(i) => r[*i]
                    .as_ref()
                    .map_or(0, |b| if is_shared(b) { 0 } else { b.len() }),
                Proj::Token(_) => 8,
            };
        }
    }
    n + rows.paging_state.as_ref().map_or(0, |p| p.len() + 4)
}

pub fn encode_outcome(frame: &mut FrameBuf, o: &Outcome, skip_metadata: bool) {
    let out = &mut frame.buf;
    match o {
        Outcome::Rows(rows) => encode_rows(frame, rows, skip_metadata),
        Outcome::Void => out.put_i32(KIND_VOID),
        Outcome::SetKeyspace(ks) => {
            out.put_i32(KIND_SET_KEYSPACE);
            put_string(out, ks);
        }
        Outcome::SchemaChange {
            change,
            target,
            keyspace,
            name,
        } => {
            out.put_i32(KIND_SCHEMA_CHANGE);
            put_string(out, change);
            put_string(out, target);
            put_string(out, keyspace);
            if let Some(n) = name {
                put_string(out, n);
            }
        }
        Outcome::Prepared(p) => {
            out.put_i32(KIND_PREPARED);
            put_short_bytes(out, &p.id);
            let global = !p.bind_specs.is_empty();
            out.put_i32(if global { 0x0001 } else { 0 });
            out.put_i32(p.bind_specs.len() as i32);
            out.put_i32(p.pk_indexes.len() as i32);
            for i in &p.pk_indexes {
                out.put_u16(*i);
            }
            write_specs(out, &p.bind_specs, global);
            match &p.result_specs {
                Some(specs) => write_metadata(out, specs, None, false),
                None => {
                    out.put_i32(0x0004);
                    out.put_i32(0);
                }
            }
        }
    }
}

/// A ROWS result; large cells go by reference.
fn encode_rows(frame: &mut FrameBuf, rows: &Rows, skip_metadata: bool) {
    frame.buf.put_i32(KIND_ROWS);
    write_metadata(
        &mut frame.buf,
        &rows.specs,
        rows.paging_state.as_deref(),
        skip_metadata,
    );
    frame.buf.put_i32(rows.rows.len() as i32);
    for r in &rows.rows {
        for p in &rows.proj {
            match p {
                Proj::Cell(i) => match &r[*i] {
                    Some(cell) if is_shared(cell) => {
                        frame.buf.put_i32(cell.len() as i32);
                        frame.put_shared(cell);
                    }
                    cell => put_bytes(&mut frame.buf, cell.as_deref()),
                },
                Proj::Token(i) => {
                    let t = r[*i].as_ref().map_or(0, |k| token_of(k));
                    frame.buf.put_i32(8);
                    frame.buf.put_i64(t);
                }
            }
        }
    }
}
