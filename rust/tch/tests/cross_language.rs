//! A state saved mid-epoch by the Python dataset resumes in this loader, and
//! the reverse: the two runs together serve the epoch exactly once. The
//! Python side is the installed `crs4_cassandra` package, run by `$PYTHON`
//! (default `python`, the development environment's on `make test`).

mod common;

use common::{shapes_store, with_timeout, TestStore};
use crs4_cassandra_tch::synthetic::{split_uuids, Encoding};
use crs4_cassandra_tch::{Loader, LoaderState};
use std::collections::HashMap;
use std::process::Command;
use uuid::Uuid;

const BATCH: usize = 3;
const SEED: u64 = 11;
const EPOCH: u64 = 1;

/// Runs the Python dataset over the test store: loads `state_in` if given,
/// iterates (out of order: `ordered=False`) and stops after `stop` batches
/// (then prints its state) or at the end. Prints the real uuids it served.
fn python(
    s: &TestStore,
    state_in: Option<&str>,
    stop: Option<usize>,
) -> (Vec<Uuid>, Option<String>) {
    const SCRIPT: &str = r#"
import json, sys, uuid
import crs4_cassandra as cc
url, split, batch, seed, epoch, state_in, stop = sys.argv[1:8]
ds = cc.ShardedDataset.from_split(url, split, "train", int(batch), seed=int(seed), ordered=False)
ds.set_epoch(int(epoch))
if state_in:
    ds.load_state_dict(json.loads(state_in))
served, n = [], 0
for b in ds:
    served += [str(i) for i, pad in zip(b.ids, b.is_pad.tolist()) if not pad]
    n += 1
    if stop and n == int(stop):
        break
state = ds.state_dict() if stop else None
print(json.dumps({"served": served, "state": state}))
"#;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python".into());
    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .args([
            s.url.as_str(),
            s.split.to_str().unwrap(),
            &BATCH.to_string(),
            &SEED.to_string(),
            &EPOCH.to_string(),
            state_in.unwrap_or(""),
            &stop.map_or(String::new(), |n| n.to_string()),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "{python} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from Python");
    let served = doc["served"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().parse().unwrap())
        .collect();
    let state = (!doc["state"].is_null()).then(|| doc["state"].to_string());
    (served, state)
}

fn loader(s: &TestStore) -> Loader {
    let mut l = Loader::builder(&s.url, "shapes")
        .split_file(&s.split, "train")
        .batch_size(BATCH)
        .seed(SEED)
        .ordered(false)
        .build()
        .unwrap();
    l.set_epoch(EPOCH);
    l
}

fn real(batch: &crs4_cassandra_tch::TchBatch) -> Vec<Uuid> {
    let pads = Vec::<bool>::try_from(&batch.is_pad).unwrap();
    batch
        .ids
        .iter()
        .zip(pads)
        .filter(|(_, p)| !p)
        .map(|(u, _)| *u)
        .collect()
}

fn assert_once(served: &[Uuid], s: &TestStore) {
    let mut count: HashMap<Uuid, usize> = HashMap::new();
    for u in served {
        *count.entry(*u).or_default() += 1;
    }
    let all = split_uuids(&s.file, "train").unwrap();
    assert!(count.values().all(|&c| c == 1), "a sample served twice");
    assert_eq!(count.len(), all.len(), "samples missing");
    assert!(all.iter().all(|u| count.contains_key(u)));
}

#[test]
fn a_python_state_resumes_in_the_tch_loader() {
    with_timeout(120, || {
        let s = shapes_store(3, 10, Encoding::Png);
        let (mut served, state) = python(&s, None, Some(4));
        let state = state.expect("Python printed its state");
        let saved = LoaderState::from_json(&state).unwrap();
        assert_eq!(
            (saved.version, saved.epoch, saved.rank),
            (2, EPOCH, Some(0))
        );
        let mut l = loader(&s);
        l.load_state(&saved).unwrap();
        for b in l.iter().unwrap() {
            served.extend(real(&b.unwrap()));
        }
        assert_once(&served, &s);
    });
}

#[test]
fn a_tch_state_resumes_in_the_python_dataset() {
    with_timeout(120, || {
        let s = shapes_store(3, 10, Encoding::Png);
        let l = loader(&s);
        let mut it = l.iter().unwrap();
        let mut served = Vec::new();
        for b in it.by_ref().take(5) {
            served.extend(real(&b.unwrap()));
        }
        let state = it.state().unwrap().to_json();
        drop(it);
        let (rest, _) = python(&s, Some(&state), None);
        served.extend(rest);
        assert_once(&served, &s);
    });
}
