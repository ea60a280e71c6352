//! Virtual system tables: what drivers read at connect and when refreshing
//! schema metadata, generated from the catalog on every read.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::server::Shared;
use crate::store::{Column, Row, TableSchema};
use crate::types::*;

pub const RELEASE_VERSION: &str = "4.0.11";
pub const CQL_VERSION: &str = "3.4.5";
pub const DATA_CENTER: &str = "datacenter1";
pub const RACK: &str = "rack1";
pub const PARTITIONER: &str = "org.apache.cassandra.dht.Murmur3Partitioner";

/// (name, CQL type) pairs of one table.
type ColDefs = &'static [(&'static str, &'static str)];

const DEFS: &[(&str, &str, ColDefs)] = &[
    (
        "system",
        "local",
        &[
            ("key", "text"),
            ("bootstrapped", "text"),
            ("broadcast_address", "inet"),
            ("broadcast_port", "int"),
            ("cluster_name", "text"),
            ("cql_version", "text"),
            ("data_center", "text"),
            ("gossip_generation", "int"),
            ("host_id", "uuid"),
            ("listen_address", "inet"),
            ("listen_port", "int"),
            ("native_protocol_version", "text"),
            ("partitioner", "text"),
            ("rack", "text"),
            ("release_version", "text"),
            ("rpc_address", "inet"),
            ("rpc_port", "int"),
            ("schema_version", "uuid"),
            ("tokens", "set<text>"),
            ("truncated_at", "map<uuid, blob>"),
        ],
    ),
    (
        "system",
        "peers",
        &[
            ("peer", "inet"),
            ("data_center", "text"),
            ("host_id", "uuid"),
            ("preferred_ip", "inet"),
            ("rack", "text"),
            ("release_version", "text"),
            ("rpc_address", "inet"),
            ("schema_version", "uuid"),
            ("tokens", "set<text>"),
        ],
    ),
    (
        "system",
        "peers_v2",
        &[
            ("peer", "inet"),
            ("peer_port", "int"),
            ("data_center", "text"),
            ("host_id", "uuid"),
            ("native_address", "inet"),
            ("native_port", "int"),
            ("preferred_ip", "inet"),
            ("preferred_port", "int"),
            ("rack", "text"),
            ("release_version", "text"),
            ("schema_version", "uuid"),
            ("tokens", "set<text>"),
        ],
    ),
    (
        "system_schema",
        "keyspaces",
        &[
            ("keyspace_name", "text"),
            ("durable_writes", "boolean"),
            ("replication", "frozen<map<text, text>>"),
        ],
    ),
    (
        "system_schema",
        "tables",
        &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("additional_write_policy", "text"),
            ("bloom_filter_fp_chance", "double"),
            ("caching", "frozen<map<text, text>>"),
            ("cdc", "boolean"),
            ("comment", "text"),
            ("compaction", "frozen<map<text, text>>"),
            ("compression", "frozen<map<text, text>>"),
            ("crc_check_chance", "double"),
            ("default_time_to_live", "int"),
            ("extensions", "frozen<map<text, blob>>"),
            ("flags", "frozen<set<text>>"),
            ("gc_grace_seconds", "int"),
            ("id", "uuid"),
            ("max_index_interval", "int"),
            ("memtable_flush_period_in_ms", "int"),
            ("min_index_interval", "int"),
            ("read_repair", "text"),
            ("speculative_retry", "text"),
        ],
    ),
    (
        "system_schema",
        "columns",
        &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("column_name", "text"),
            ("clustering_order", "text"),
            ("column_name_bytes", "blob"),
            ("kind", "text"),
            ("position", "int"),
            ("type", "text"),
        ],
    ),
    (
        "system_schema",
        "dropped_columns",
        &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("column_name", "text"),
            ("dropped_time", "timestamp"),
            ("kind", "text"),
            ("type", "text"),
        ],
    ),
    (
        "system_schema",
        "types",
        &[
            ("keyspace_name", "text"),
            ("type_name", "text"),
            ("field_names", "frozen<list<text>>"),
            ("field_types", "frozen<list<text>>"),
        ],
    ),
    (
        "system_schema",
        "functions",
        &[
            ("keyspace_name", "text"),
            ("function_name", "text"),
            ("argument_types", "frozen<list<text>>"),
            ("argument_names", "frozen<list<text>>"),
            ("body", "text"),
            ("called_on_null_input", "boolean"),
            ("language", "text"),
            ("return_type", "text"),
        ],
    ),
    (
        "system_schema",
        "aggregates",
        &[
            ("keyspace_name", "text"),
            ("aggregate_name", "text"),
            ("argument_types", "frozen<list<text>>"),
            ("final_func", "text"),
            ("initcond", "text"),
            ("return_type", "text"),
            ("state_func", "text"),
            ("state_type", "text"),
        ],
    ),
    (
        "system_schema",
        "views",
        &[
            ("keyspace_name", "text"),
            ("view_name", "text"),
            ("base_table_id", "uuid"),
            ("base_table_name", "text"),
            ("bloom_filter_fp_chance", "double"),
            ("caching", "frozen<map<text, text>>"),
            ("comment", "text"),
            ("compaction", "frozen<map<text, text>>"),
            ("compression", "frozen<map<text, text>>"),
            ("crc_check_chance", "double"),
            ("default_time_to_live", "int"),
            ("extensions", "frozen<map<text, blob>>"),
            ("gc_grace_seconds", "int"),
            ("id", "uuid"),
            ("include_all_columns", "boolean"),
            ("max_index_interval", "int"),
            ("memtable_flush_period_in_ms", "int"),
            ("min_index_interval", "int"),
            ("read_repair", "text"),
            ("speculative_retry", "text"),
            ("where_clause", "text"),
        ],
    ),
    (
        "system_schema",
        "indexes",
        &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("index_name", "text"),
            ("kind", "text"),
            ("options", "frozen<map<text, text>>"),
        ],
    ),
    (
        "system_schema",
        "triggers",
        &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("trigger_name", "text"),
            ("options", "frozen<map<text, text>>"),
        ],
    ),
];

type SchemaMap = HashMap<(String, String), Arc<TableSchema>>;

fn schemas() -> &'static SchemaMap {
    static S: OnceLock<SchemaMap> = OnceLock::new();
    S.get_or_init(|| {
        DEFS.iter()
            .map(|(ks, name, cols)| {
                let columns = cols
                    .iter()
                    .map(|(n, t)| Column {
                        name: n.to_string(),
                        ty: ColType::parse(t).expect("system column type"),
                    })
                    .collect();
                let schema = TableSchema {
                    keyspace: ks.to_string(),
                    name: name.to_string(),
                    id: uuid::Uuid::nil(),
                    columns,
                };
                ((ks.to_string(), name.to_string()), Arc::new(schema))
            })
            .collect()
    })
}

pub fn schema_of(ks: &str, name: &str) -> Option<Arc<TableSchema>> {
    schemas().get(&(ks.to_string(), name.to_string())).cloned()
}

/// Rows of a system table as seen from node `me`.
pub fn rows_of(shared: &Shared, me: usize, ks: &str, name: &str) -> Vec<Row> {
    let version = shared.catalog.schema_version();
    let port = shared.port() as i32;
    let mut rows: Vec<Vec<Option<Bytes>>> = Vec::new();
    match (ks, name) {
        ("system", "local") => {
            let n = &shared.nodes[me];
            rows.push(vec![
                text_cell("local"),
                text_cell("COMPLETED"),
                inet_cell(n.addr),
                int_cell(7000),
                text_cell(&shared.cluster_name),
                text_cell(CQL_VERSION),
                text_cell(DATA_CENTER),
                int_cell(shared.gossip_generation),
                uuid_cell(&n.host_id),
                inet_cell(n.addr),
                int_cell(7000),
                text_cell("4"),
                text_cell(PARTITIONER),
                text_cell(RACK),
                text_cell(RELEASE_VERSION),
                inet_cell(n.addr),
                int_cell(port),
                uuid_cell(&version),
                text_list_cell(&[n.token.to_string()]),
                None,
            ]);
        }
        ("system", "peers") => {
            for (i, n) in shared.nodes.iter().enumerate() {
                if i == me {
                    continue;
                }
                rows.push(vec![
                    inet_cell(n.addr),
                    text_cell(DATA_CENTER),
                    uuid_cell(&n.host_id),
                    None,
                    text_cell(RACK),
                    text_cell(RELEASE_VERSION),
                    inet_cell(n.addr),
                    uuid_cell(&version),
                    text_list_cell(&[n.token.to_string()]),
                ]);
            }
        }
        ("system", "peers_v2") => {
            for (i, n) in shared.nodes.iter().enumerate() {
                if i == me {
                    continue;
                }
                rows.push(vec![
                    inet_cell(n.addr),
                    int_cell(7000),
                    text_cell(DATA_CENTER),
                    uuid_cell(&n.host_id),
                    inet_cell(n.addr),
                    int_cell(port),
                    None,
                    None,
                    text_cell(RACK),
                    text_cell(RELEASE_VERSION),
                    uuid_cell(&version),
                    text_list_cell(&[n.token.to_string()]),
                ]);
            }
        }
        ("system_schema", "keyspaces") => {
            let kss = shared.catalog.keyspaces.read().unwrap();
            for k in kss.values() {
                rows.push(vec![
                    text_cell(&k.name),
                    bool_cell(k.durable_writes),
                    text_map_cell(&k.replication),
                ]);
            }
        }
        ("system_schema", "tables") => {
            let kss = shared.catalog.keyspaces.read().unwrap();
            for k in kss.values() {
                for t in k.tables.values() {
                    let s = &t.schema;
                    rows.push(vec![
                        text_cell(&s.keyspace),
                        text_cell(&s.name),
                        text_cell("99p"),
                        double_cell(0.01),
                        text_map_cell(&[("keys", "ALL"), ("rows_per_partition", "NONE")]),
                        bool_cell(false),
                        text_cell(""),
                        text_map_cell(&[
                            (
                                "class",
                                "org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy",
                            ),
                            ("max_threshold", "32"),
                            ("min_threshold", "4"),
                        ]),
                        text_map_cell(&[("enabled", "false")]),
                        double_cell(1.0),
                        int_cell(0),
                        text_map_cell::<&str, &str>(&[]),
                        text_list_cell(&["compound"]),
                        int_cell(864000),
                        uuid_cell(&s.id),
                        int_cell(2048),
                        int_cell(0),
                        int_cell(128),
                        text_cell("BLOCKING"),
                        text_cell("99p"),
                    ]);
                }
            }
        }
        ("system_schema", "columns") => {
            let kss = shared.catalog.keyspaces.read().unwrap();
            for k in kss.values() {
                for t in k.tables.values() {
                    let s = &t.schema;
                    for (i, c) in s.columns.iter().enumerate() {
                        let (kind, pos) = if i == 0 {
                            ("partition_key", 0)
                        } else {
                            ("regular", -1)
                        };
                        rows.push(vec![
                            text_cell(&s.keyspace),
                            text_cell(&s.name),
                            text_cell(&c.name),
                            text_cell("none"),
                            Some(Bytes::copy_from_slice(c.name.as_bytes())),
                            text_cell(kind),
                            int_cell(pos),
                            text_cell(&c.ty.cql_name()),
                        ]);
                    }
                }
            }
        }
        _ => {}
    }
    rows.into_iter().map(Row::from).collect()
}
