//! Trains a small CNN with tch on an imagenette-like dataset read from a local
//! store, then prints the validation accuracy.
//!
//! ```text
//! cargo run --release -p crs4-cassandra-tch --example train_imagenette -- \
//!     [--store local:PATH --table NAME --split-file FILE] [--epochs 3] [--batch-size 32]
//!     [--lr 0.003] [--size 64] [--device cpu|cuda] [--seed 0] [--classes 10] [--per-class 100]
//! ```
//!
//! Without `--store`, it first generates a stand-in (ten shape classes, 64x64
//! JPEGs) in a temporary local store.

use crs4_cassandra_tch::synthetic::{write_shapes_store, ShapesSpec};
use crs4_cassandra_tch::{Images, Loader};
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind};

#[derive(Debug, Clone)]
pub struct Config {
    /// Store URL, table and split file; `None`: generate a stand-in.
    pub data: Option<(String, String, PathBuf)>,
    /// Stand-in size, when generating.
    pub classes: usize,
    pub per_class: usize,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// Images are resized to `size` x `size`.
    pub size: u32,
    pub device: Device,
    pub seed: u64,
    /// Stop each epoch after this many batches (for quick runs).
    pub max_steps: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data: None,
            classes: 10,
            per_class: 100,
            epochs: 3,
            batch_size: 32,
            lr: 3e-3,
            size: 64,
            device: Device::cuda_if_available(),
            seed: 0,
            max_steps: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Loss of each training step, in order.
    pub step_losses: Vec<f64>,
    pub val_accuracy: f64,
    pub train_images_per_sec: f64,
}

fn net(vs: &nn::Path, classes: i64) -> impl ModuleT {
    let block = |c_in, c_out| {
        let conv = nn::conv2d(
            vs,
            c_in,
            c_out,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: false,
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(vs, c_out, Default::default());
        nn::seq_t()
            .add(conv)
            .add(bn)
            .add_fn(|x| x.relu().max_pool2d_default(2))
    };
    nn::seq_t()
        .add(block(3, 16))
        .add(block(16, 32))
        .add(block(32, 64))
        .add_fn(|x| x.adaptive_max_pool2d([1, 1]).0.flatten(1, -1))
        .add(nn::linear(vs, 64, classes, Default::default()))
}

fn loader(
    store: &str,
    table: &str,
    split: &PathBuf,
    name: &str,
    cfg: &Config,
    shuffle: bool,
) -> crs4_cassandra_tch::Result<Loader> {
    Loader::builder(store, table)
        .split_file(split, name)
        .batch_size(cfg.batch_size)
        .seed(cfg.seed)
        .shuffle(shuffle)
        .images(Images::Normalized {
            mean: [0.5; 3],
            std: [0.25; 3],
        })
        .resize(cfg.size, cfg.size)
        .build()
}

pub fn run(cfg: &Config) -> Result<Report, Box<dyn std::error::Error>> {
    tch::manual_seed(cfg.seed as i64);
    let tmp;
    let (store, table, split) = match &cfg.data {
        Some((store, table, split)) => (store.clone(), table.clone(), split.clone()),
        None => {
            tmp = tempfile::tempdir()?;
            let split = tmp.path().join("shapes.split");
            let spec = ShapesSpec {
                classes: cfg.classes,
                per_class: cfg.per_class,
                size: cfg.size,
                seed: cfg.seed,
                ..Default::default()
            };
            write_shapes_store(&tmp.path().join("store"), "shapes", &split, &spec)?;
            let store = format!("local:{}", tmp.path().join("store").display());
            (store, "shapes".to_string(), split)
        }
    };
    let classes = crs4_cassandra_core::SplitFile::load(&split)?
        .header
        .classes
        .len() as i64;
    let mut train = loader(&store, &table, &split, "train", cfg, true)?;
    let val = loader(&store, &table, &split, "val", cfg, false)?;

    let vs = nn::VarStore::new(cfg.device);
    let model = net(&vs.root(), classes);
    let mut opt = nn::Adam::default().build(&vs, cfg.lr)?;
    let mut report = Report {
        epoch_losses: Vec::new(),
        step_losses: Vec::new(),
        val_accuracy: 0.0,
        train_images_per_sec: 0.0,
    };
    let (mut images, mut seconds) = (0usize, 0f64);
    for epoch in 0..cfg.epochs {
        train.set_epoch(epoch);
        let started = Instant::now();
        let mut losses = Vec::new();
        for (step, batch) in train.iter()?.enumerate() {
            if cfg.max_steps.is_some_and(|m| step >= m) {
                break;
            }
            let batch = batch?;
            let x = batch
                .images
                .as_ref()
                .ok_or("no images")?
                .to_device(cfg.device);
            let y = batch
                .labels
                .as_ref()
                .ok_or("no labels")?
                .to_device(cfg.device);
            let loss = model.forward_t(&x, true).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            losses.push(loss.double_value(&[]));
            images += batch.len();
        }
        seconds += started.elapsed().as_secs_f64();
        let mean = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        println!(
            "epoch {epoch}: {} steps, mean loss {mean:.4}, {:.1} s",
            losses.len(),
            started.elapsed().as_secs_f64()
        );
        report.epoch_losses.push(mean);
        report.step_losses.extend(losses);
    }
    report.train_images_per_sec = images as f64 / seconds.max(1e-9);

    let (mut correct, mut total) = (0i64, 0i64);
    tch::no_grad(|| -> Result<(), Box<dyn std::error::Error>> {
        for batch in val.iter()? {
            let batch = batch?;
            let x = batch
                .images
                .as_ref()
                .ok_or("no images")?
                .to_device(cfg.device);
            let y = batch
                .labels
                .as_ref()
                .ok_or("no labels")?
                .to_device(cfg.device);
            // Pads repeat samples to fill the last batch: not counted.
            let real = batch.is_pad.logical_not().to_device(cfg.device);
            let hit = model
                .forward_t(&x, false)
                .argmax(-1, false)
                .eq_tensor(&y)
                .logical_and(&real);
            correct += hit.sum(Kind::Int64).int64_value(&[]);
            total += real.sum(Kind::Int64).int64_value(&[]);
        }
        Ok(())
    })?;
    report.val_accuracy = correct as f64 / total.max(1) as f64;
    println!(
        "validation accuracy {:.3} ({correct}/{total}), {:.0} training images/s on {:?}",
        report.val_accuracy, report.train_images_per_sec, cfg.device
    );
    Ok(report)
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config::default();
    let (mut store, mut table, mut split) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("bad value for {flag}: {e}");
        match flag.as_str() {
            "--store" => store = Some(value()?),
            "--table" => table = Some(value()?),
            "--split-file" => split = Some(PathBuf::from(value()?)),
            "--epochs" => cfg.epochs = value()?.parse().map_err(|e| bad(&e))?,
            "--batch-size" => cfg.batch_size = value()?.parse().map_err(|e| bad(&e))?,
            "--lr" => cfg.lr = value()?.parse().map_err(|e| bad(&e))?,
            "--size" => cfg.size = value()?.parse().map_err(|e| bad(&e))?,
            "--seed" => cfg.seed = value()?.parse().map_err(|e| bad(&e))?,
            "--classes" => cfg.classes = value()?.parse().map_err(|e| bad(&e))?,
            "--per-class" => cfg.per_class = value()?.parse().map_err(|e| bad(&e))?,
            "--device" => {
                cfg.device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    other => return Err(format!("--device must be cpu or cuda, got {other}")),
                }
            }
            "-h" | "--help" => {
                return Err("usage: train_imagenette [--store local:PATH --table NAME \
                     --split-file FILE] [--epochs N] [--batch-size N] [--lr X] [--size PX] \
                     [--seed N] [--classes N] [--per-class N] [--device cpu|cuda]"
                    .into())
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    cfg.data = match (store, table, split) {
        (Some(s), Some(t), Some(f)) => Some((s, t, f)),
        (None, None, None) => None,
        _ => return Err("give --store, --table and --split-file together".into()),
    };
    Ok(cfg)
}

fn main() {
    let cfg = match parse_args() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&cfg) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
