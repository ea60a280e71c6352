//! A small CQL parser for the statement subset the server supports.

use crate::error::CqlError;
use crate::types::{ColType, Literal};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Int(i128),
    Float(f64),
    Hex(Vec<u8>),
    Uuid([u8; 16]),
    Sym(&'static str),
    Bind(Option<String>),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, CqlError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') || c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            match s[i + 2..].find("*/") {
                Some(p) => i += p + 4,
                None => return Err(CqlError::syntax("unterminated comment")),
            }
            continue;
        }
        if let Some(u) = uuid_at(&s[i..]) {
            out.push(Tok::Uuid(u));
            i += 36;
            continue;
        }
        if c == b'\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match s[i..].find('\'') {
                    None => return Err(CqlError::syntax("unterminated string literal")),
                    Some(p) => {
                        v.push_str(&s[i..i + p]);
                        i += p + 1;
                        if b.get(i) == Some(&b'\'') {
                            v.push('\'');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            out.push(Tok::Str(v));
            continue;
        }
        if c == b'$' && b.get(i + 1) == Some(&b'$') {
            match s[i + 2..].find("$$") {
                Some(p) => {
                    out.push(Tok::Str(s[i + 2..i + 2 + p].to_string()));
                    i += p + 4;
                }
                None => return Err(CqlError::syntax("unterminated $$ string")),
            }
            continue;
        }
        if c == b'"' {
            let mut v = String::new();
            i += 1;
            loop {
                match s[i..].find('"') {
                    None => return Err(CqlError::syntax("unterminated quoted identifier")),
                    Some(p) => {
                        v.push_str(&s[i..i + p]);
                        i += p + 1;
                        if b.get(i) == Some(&b'"') {
                            v.push('"');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            out.push(Tok::Quoted(v));
            continue;
        }
        if c == b'0' && matches!(b.get(i + 1), Some(b'x') | Some(b'X')) {
            let start = i + 2;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_hexdigit() {
                j += 1;
            }
            let hex = &s[start..j];
            if hex.len() & 1 == 1 {
                return Err(CqlError::syntax("odd-length hex literal"));
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
                .collect();
            out.push(Tok::Hex(bytes));
            i = j;
            continue;
        }
        let neg_number = c == b'-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        if c.is_ascii_digit() || neg_number {
            let start = i;
            i += 1;
            let mut is_float = false;
            while i < b.len() {
                let d = b[i];
                if d.is_ascii_digit() {
                    i += 1;
                } else if d == b'.' || d == b'e' || d == b'E' {
                    is_float = true;
                    i += 1;
                    if (d == b'e' || d == b'E') && matches!(b.get(i), Some(b'-') | Some(b'+')) {
                        i += 1;
                    }
                } else {
                    break;
                }
            }
            let text = &s[start..i];
            if is_float {
                out.push(Tok::Float(
                    text.parse()
                        .map_err(|_| CqlError::syntax(format!("bad number {text}")))?,
                ));
            } else {
                out.push(Tok::Int(
                    text.parse()
                        .map_err(|_| CqlError::syntax(format!("bad number {text}")))?,
                ));
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].to_string()));
            continue;
        }
        if c == b'?' {
            out.push(Tok::Bind(None));
            i += 1;
            continue;
        }
        if c == b':'
            && b.get(i + 1)
                .is_some_and(|d| d.is_ascii_alphabetic() || *d == b'_')
        {
            let start = i + 1;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Bind(Some(s[start..i].to_ascii_lowercase())));
            continue;
        }
        let two = s.get(i..i + 2).unwrap_or("");
        let sym: &'static str = match two {
            "<=" => "<=",
            ">=" => ">=",
            "!=" => "!=",
            _ => match c {
                b'(' => "(",
                b')' => ")",
                b',' => ",",
                b'.' => ".",
                b';' => ";",
                b'=' => "=",
                b'<' => "<",
                b'>' => ">",
                b'*' => "*",
                b'{' => "{",
                b'}' => "}",
                b'[' => "[",
                b']' => "]",
                b':' => ":",
                b'+' => "+",
                b'-' => "-",
                _ => {
                    return Err(CqlError::syntax(format!(
                        "line 1:{i} unexpected character '{}'",
                        c as char
                    )))
                }
            },
        };
        i += sym.len();
        out.push(Tok::Sym(sym));
    }
    Ok(out)
}

fn uuid_at(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() < 36 {
        return None;
    }
    for (k, &c) in b[..36].iter().enumerate() {
        let ok = if matches!(k, 8 | 13 | 18 | 23) {
            c == b'-'
        } else {
            c.is_ascii_hexdigit()
        };
        if !ok {
            return None;
        }
    }
    if b.get(36)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return None;
    }
    uuid::Uuid::parse_str(&s[..36]).ok().map(|u| *u.as_bytes())
}

#[derive(Clone, Debug, PartialEq)]
pub struct QualName {
    pub keyspace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    Lit(Literal),
    Bind(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum InValues {
    List(Vec<Term>),
    Bind(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Rel {
    Eq(String, Term),
    In(String, InValues),
    Token(Vec<String>, Op, Term),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    Star,
    Column(String),
    Token(Vec<String>),
    CountStar,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Select {
    pub table: QualName,
    pub selectors: Vec<(Selector, Option<String>)>,
    pub rels: Vec<Rel>,
    pub limit: Option<Term>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Use(String),
    CreateKeyspace {
        name: String,
        if_not_exists: bool,
        replication: Vec<(String, String)>,
        durable_writes: bool,
    },
    CreateTable {
        table: QualName,
        if_not_exists: bool,
        columns: Vec<(String, ColType)>,
        partition_key: String,
    },
    DropTable {
        table: QualName,
        if_exists: bool,
    },
    DropKeyspace {
        name: String,
        if_exists: bool,
    },
    Truncate(QualName),
    Insert {
        table: QualName,
        columns: Vec<String>,
        values: Vec<Term>,
        if_not_exists: bool,
    },
    Delete {
        table: QualName,
        rels: Vec<Rel>,
    },
    Select(Select),
}

/// A parsed statement with its bind markers (names for `:name` markers).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub stmt: Stmt,
    pub bind_names: Vec<Option<String>>,
}

pub fn parse(s: &str) -> Result<Parsed, CqlError> {
    let toks = tokenize(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        binds: Vec::new(),
    };
    let stmt = p.statement()?;
    while p.eat_sym(";") {}
    if p.pos < p.toks.len() {
        return Err(CqlError::syntax(format!(
            "line 1: unexpected input near {:?}",
            p.toks[p.pos]
        )));
    }
    Ok(Parsed {
        stmt,
        bind_names: p.binds,
    })
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    binds: Vec<Option<String>>,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn err<T>(&self, what: &str) -> Result<T, CqlError> {
        Err(CqlError::syntax(format!(
            "line 1: expected {what}, found {}",
            match self.peek() {
                Some(t) => format!("{t:?}"),
                None => "end of input".into(),
            }
        )))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), CqlError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            self.err(kw)
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), CqlError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            self.err(&format!("'{sym}'"))
        }
    }

    fn ident(&mut self) -> Result<String, CqlError> {
        match self.peek().cloned() {
            Some(Tok::Ident(s)) => {
                self.pos += 1;
                Ok(s.to_ascii_lowercase())
            }
            Some(Tok::Quoted(s)) => {
                self.pos += 1;
                Ok(s)
            }
            _ => self.err("identifier"),
        }
    }

    fn qual_name(&mut self) -> Result<QualName, CqlError> {
        let first = self.ident()?;
        if self.eat_sym(".") {
            Ok(QualName {
                keyspace: Some(first),
                name: self.ident()?,
            })
        } else {
            Ok(QualName {
                keyspace: None,
                name: first,
            })
        }
    }

    fn if_not_exists(&mut self) -> Result<bool, CqlError> {
        if self.eat_kw("if") {
            self.expect_kw("not")?;
            self.expect_kw("exists")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn if_exists(&mut self) -> Result<bool, CqlError> {
        if self.eat_kw("if") {
            self.expect_kw("exists")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn statement(&mut self) -> Result<Stmt, CqlError> {
        if self.eat_kw("use") {
            return Ok(Stmt::Use(self.ident()?));
        }
        if self.eat_kw("select") {
            return Ok(Stmt::Select(self.select()?));
        }
        if self.eat_kw("insert") {
            return self.insert();
        }
        if self.eat_kw("delete") {
            self.expect_kw("from")?;
            let table = self.qual_name()?;
            self.skip_using()?;
            self.expect_kw("where")?;
            let rels = self.relations()?;
            return Ok(Stmt::Delete { table, rels });
        }
        if self.eat_kw("truncate") {
            self.eat_kw("table");
            return Ok(Stmt::Truncate(self.qual_name()?));
        }
        if self.eat_kw("create") {
            if self.eat_kw("keyspace") || self.eat_kw("schema") {
                return self.create_keyspace();
            }
            if self.eat_kw("table") || self.eat_kw("columnfamily") {
                return self.create_table();
            }
            return self.err("KEYSPACE or TABLE");
        }
        if self.eat_kw("drop") {
            if self.eat_kw("keyspace") || self.eat_kw("schema") {
                let if_exists = self.if_exists()?;
                return Ok(Stmt::DropKeyspace {
                    if_exists,
                    name: self.ident()?,
                });
            }
            if self.eat_kw("table") || self.eat_kw("columnfamily") {
                let if_exists = self.if_exists()?;
                return Ok(Stmt::DropTable {
                    if_exists,
                    table: self.qual_name()?,
                });
            }
            return self.err("KEYSPACE or TABLE");
        }
        self.err("a supported statement")
    }

    fn literal(&mut self) -> Result<Literal, CqlError> {
        let t = self.peek().cloned();
        let lit = match t {
            Some(Tok::Str(s)) => Literal::Str(s),
            Some(Tok::Int(i)) => Literal::Int(i),
            Some(Tok::Float(f)) => Literal::Float(f),
            Some(Tok::Hex(h)) => Literal::Hex(h),
            Some(Tok::Uuid(u)) => Literal::Uuid(u),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Literal::Null,
            Some(Tok::Sym("[")) => {
                self.pos += 1;
                let mut items = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        items.push(self.literal()?);
                        if self.eat_sym("]") {
                            break;
                        }
                        self.expect_sym(",")?;
                    }
                }
                return Ok(Literal::List(items));
            }
            Some(Tok::Sym("{")) => {
                self.pos += 1;
                let mut pairs = Vec::new();
                let mut items = Vec::new();
                if !self.eat_sym("}") {
                    loop {
                        let k = self.literal()?;
                        if self.eat_sym(":") {
                            pairs.push((k, self.literal()?));
                        } else {
                            items.push(k);
                        }
                        if self.eat_sym("}") {
                            break;
                        }
                        self.expect_sym(",")?;
                    }
                }
                return Ok(if items.is_empty() {
                    Literal::Map(pairs)
                } else {
                    Literal::List(items)
                });
            }
            _ => return self.err("a literal"),
        };
        self.pos += 1;
        Ok(lit)
    }

    fn term(&mut self) -> Result<Term, CqlError> {
        if let Some(Tok::Bind(name)) = self.peek().cloned() {
            self.pos += 1;
            self.binds.push(name);
            return Ok(Term::Bind(self.binds.len() - 1));
        }
        Ok(Term::Lit(self.literal()?))
    }

    fn create_keyspace(&mut self) -> Result<Stmt, CqlError> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident()?;
        let mut replication = vec![(
            "class".to_string(),
            "org.apache.cassandra.locator.SimpleStrategy".to_string(),
        )];
        let mut durable_writes = true;
        if self.eat_kw("with") {
            loop {
                let opt = self.ident()?;
                self.expect_sym("=")?;
                let v = self.literal()?;
                match (opt.as_str(), v) {
                    ("replication", Literal::Map(pairs)) => {
                        replication = pairs
                            .into_iter()
                            .map(|(k, v)| (lit_text(&k), lit_text(&v)))
                            .collect();
                        for (k, v) in replication.iter_mut() {
                            if k == "class" && !v.contains('.') {
                                *v = format!("org.apache.cassandra.locator.{v}");
                            }
                        }
                    }
                    ("durable_writes", Literal::Bool(b)) => durable_writes = b,
                    _ => {}
                }
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        Ok(Stmt::CreateKeyspace {
            name,
            if_not_exists,
            replication,
            durable_writes,
        })
    }

    fn create_table(&mut self) -> Result<Stmt, CqlError> {
        let if_not_exists = self.if_not_exists()?;
        let table = self.qual_name()?;
        self.expect_sym("(")?;
        let mut columns: Vec<(String, ColType)> = Vec::new();
        let mut pk: Vec<Vec<String>> = Vec::new();
        loop {
            if self.eat_kw("primary") {
                self.expect_kw("key")?;
                self.expect_sym("(")?;
                let mut parts = Vec::new();
                if self.eat_sym("(") {
                    let mut p = vec![self.ident()?];
                    while self.eat_sym(",") {
                        p.push(self.ident()?);
                    }
                    self.expect_sym(")")?;
                    parts.push(p);
                } else {
                    parts.push(vec![self.ident()?]);
                }
                while self.eat_sym(",") {
                    parts.push(vec![self.ident()?]);
                }
                self.expect_sym(")")?;
                pk = parts;
            } else {
                let name = self.ident()?;
                let ty = self.type_name()?;
                columns.push((name.clone(), ColType::parse(&ty)?));
                if self.eat_kw("static") {
                    return Err(CqlError::invalid("static columns are not supported"));
                }
                if self.eat_kw("primary") {
                    self.expect_kw("key")?;
                    pk = vec![vec![name]];
                }
            }
            if self.eat_sym(")") {
                break;
            }
            self.expect_sym(",")?;
        }
        if self.eat_kw("with") {
            self.skip_table_options()?;
        }
        if pk.is_empty() {
            return Err(CqlError::invalid("no PRIMARY KEY specified"));
        }
        if pk.len() > 1 || pk[0].len() != 1 {
            return Err(CqlError::invalid(
                "only a single-column partition key without clustering columns is supported",
            ));
        }
        let partition_key = pk[0][0].clone();
        if !columns.iter().any(|(n, _)| *n == partition_key) {
            return Err(CqlError::invalid(format!(
                "unknown definition {partition_key} referenced in PRIMARY KEY"
            )));
        }
        Ok(Stmt::CreateTable {
            table,
            if_not_exists,
            columns,
            partition_key,
        })
    }

    /// Table options are accepted and ignored, including
    /// `CLUSTERING ORDER BY (...)` and `COMPACT STORAGE`.
    fn skip_table_options(&mut self) -> Result<(), CqlError> {
        loop {
            if self.eat_kw("clustering") {
                self.expect_kw("order")?;
                self.expect_kw("by")?;
                self.expect_sym("(")?;
                let mut depth = 1;
                while depth > 0 {
                    match self.peek() {
                        Some(Tok::Sym("(")) => depth += 1,
                        Some(Tok::Sym(")")) => depth -= 1,
                        None => return self.err("')'"),
                        _ => {}
                    }
                    self.pos += 1;
                }
            } else if self.eat_kw("compact") {
                self.expect_kw("storage")?;
            } else {
                self.ident()?;
                self.expect_sym("=")?;
                self.literal()?;
            }
            if !self.eat_kw("and") {
                return Ok(());
            }
        }
    }

    /// Reads a type name, including generic arguments, back into text.
    fn type_name(&mut self) -> Result<String, CqlError> {
        let mut s = self.ident()?;
        if self.eat_sym("<") {
            s.push('<');
            s.push_str(&self.type_name()?);
            while self.eat_sym(",") {
                s.push(',');
                s.push_str(&self.type_name()?);
            }
            self.expect_sym(">")?;
            s.push('>');
        }
        Ok(s)
    }

    fn skip_using(&mut self) -> Result<(), CqlError> {
        if self.eat_kw("using") {
            loop {
                if !(self.eat_kw("ttl") || self.eat_kw("timestamp")) {
                    return self.err("TTL or TIMESTAMP");
                }
                self.term()?;
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self) -> Result<Stmt, CqlError> {
        self.expect_kw("into")?;
        let table = self.qual_name()?;
        self.expect_sym("(")?;
        let mut columns = vec![self.ident()?];
        while self.eat_sym(",") {
            columns.push(self.ident()?);
        }
        self.expect_sym(")")?;
        self.expect_kw("values")?;
        self.expect_sym("(")?;
        let mut values = vec![self.term()?];
        while self.eat_sym(",") {
            values.push(self.term()?);
        }
        self.expect_sym(")")?;
        if columns.len() != values.len() {
            return Err(CqlError::invalid("unmatched column names/values"));
        }
        let if_not_exists = self.if_not_exists()?;
        self.skip_using()?;
        Ok(Stmt::Insert {
            table,
            columns,
            values,
            if_not_exists,
        })
    }

    fn token_args(&mut self) -> Result<Vec<String>, CqlError> {
        self.expect_sym("(")?;
        let mut cols = vec![self.ident()?];
        while self.eat_sym(",") {
            cols.push(self.ident()?);
        }
        self.expect_sym(")")?;
        Ok(cols)
    }

    fn select(&mut self) -> Result<Select, CqlError> {
        self.eat_kw("json");
        self.eat_kw("distinct");
        let mut selectors = Vec::new();
        if self.eat_sym("*") {
            selectors.push((Selector::Star, None));
        } else {
            loop {
                let sel = if self.is_kw("token")
                    && matches!(self.toks.get(self.pos + 1), Some(Tok::Sym("(")))
                {
                    self.pos += 1;
                    Selector::Token(self.token_args()?)
                } else if self.is_kw("count")
                    && matches!(self.toks.get(self.pos + 1), Some(Tok::Sym("(")))
                {
                    self.pos += 2;
                    if !self.eat_sym("*") {
                        match self.peek() {
                            Some(Tok::Int(1)) => self.pos += 1,
                            _ => {
                                self.ident()?;
                            }
                        }
                    }
                    self.expect_sym(")")?;
                    Selector::CountStar
                } else {
                    Selector::Column(self.ident()?)
                };
                let alias = if self.eat_kw("as") {
                    Some(self.ident()?)
                } else {
                    None
                };
                selectors.push((sel, alias));
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        self.expect_kw("from")?;
        let table = self.qual_name()?;
        let rels = if self.eat_kw("where") {
            self.relations()?
        } else {
            Vec::new()
        };
        let mut limit = None;
        loop {
            if self.eat_kw("limit") {
                limit = Some(self.term()?);
            } else if self.eat_kw("allow") {
                self.expect_kw("filtering")?;
            } else if self.eat_kw("per") {
                return Err(CqlError::invalid("PER PARTITION LIMIT is not supported"));
            } else if self.is_kw("order") {
                return Err(CqlError::invalid("ORDER BY is not supported"));
            } else {
                break;
            }
        }
        Ok(Select {
            table,
            selectors,
            rels,
            limit,
        })
    }

    fn relations(&mut self) -> Result<Vec<Rel>, CqlError> {
        let mut rels = Vec::new();
        loop {
            if self.is_kw("token") && matches!(self.toks.get(self.pos + 1), Some(Tok::Sym("("))) {
                self.pos += 1;
                let cols = self.token_args()?;
                let op = self.op()?;
                let t = if self.is_kw("token") {
                    return Err(CqlError::invalid("token(literal) bounds are not supported"));
                } else {
                    self.term()?
                };
                rels.push(Rel::Token(cols, op, t));
            } else {
                let col = self.ident()?;
                if self.eat_kw("in") {
                    if let Some(Tok::Bind(name)) = self.peek().cloned() {
                        self.pos += 1;
                        self.binds.push(name);
                        rels.push(Rel::In(col, InValues::Bind(self.binds.len() - 1)));
                    } else {
                        self.expect_sym("(")?;
                        let mut vals = Vec::new();
                        if !self.eat_sym(")") {
                            vals.push(self.term()?);
                            while self.eat_sym(",") {
                                vals.push(self.term()?);
                            }
                            self.expect_sym(")")?;
                        }
                        rels.push(Rel::In(col, InValues::List(vals)));
                    }
                } else {
                    match self.op()? {
                        Op::Eq => {
                            let t = self.term()?;
                            rels.push(Rel::Eq(col, t));
                        }
                        _ => {
                            return Err(CqlError::invalid(format!(
                                "only equality is supported on column {col}"
                            )))
                        }
                    }
                }
            }
            if !self.eat_kw("and") {
                return Ok(rels);
            }
        }
    }

    fn op(&mut self) -> Result<Op, CqlError> {
        let op = match self.peek() {
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return self.err("a comparison operator"),
        };
        self.pos += 1;
        Ok(op)
    }
}

fn lit_text(l: &Literal) -> String {
    match l {
        Literal::Str(s) => s.clone(),
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => f.to_string(),
        Literal::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_create_table() {
        let p = parse(
            "CREATE TABLE IF NOT EXISTS Ks.\"T\" (id uuid, label int, data blob, PRIMARY KEY ((id))) WITH compression = {'enabled': 'false'} AND gc_grace_seconds = 0;",
        )
        .unwrap();
        match p.stmt {
            Stmt::CreateTable {
                table,
                if_not_exists,
                columns,
                partition_key,
            } => {
                assert!(if_not_exists);
                assert_eq!(table.keyspace.as_deref(), Some("ks"));
                assert_eq!(table.name, "T");
                assert_eq!(columns.len(), 3);
                assert_eq!(partition_key, "id");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_select_forms() {
        let p = parse("select id, data from ks.t where token(id) > ? and token(id) <= ? limit 10")
            .unwrap();
        assert_eq!(p.bind_names.len(), 2);
        let p = parse("SELECT * FROM system.local WHERE key='local'").unwrap();
        assert!(matches!(p.stmt, Stmt::Select(_)));
        let p = parse(
            "SELECT keyspace_name FROM system_schema.tables where keyspace_name in ? ALLOW FILTERING",
        )
        .unwrap();
        assert_eq!(p.bind_names.len(), 1);
        let p = parse("insert into t (id, v) values (123e4567-e89b-12d3-a456-426614174000, 0xcafe) USING TTL 10").unwrap();
        match p.stmt {
            Stmt::Insert { values, .. } => {
                assert!(matches!(values[0], Term::Lit(Literal::Uuid(_))));
                assert_eq!(values[1], Term::Lit(Literal::Hex(vec![0xca, 0xfe])));
            }
            other => panic!("{other:?}"),
        }
    }
}
