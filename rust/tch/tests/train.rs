//! Runs the training example briefly: the loss must fall.

mod common;

#[allow(dead_code)]
#[path = "../examples/train_imagenette.rs"]
mod train_imagenette;

use common::with_timeout;
use train_imagenette::{run, Config};

#[test]
fn the_example_learns_the_shapes() {
    let report = with_timeout(300, || {
        let cfg = Config {
            classes: 4,
            per_class: 40,
            epochs: 4,
            batch_size: 16,
            lr: 3e-3,
            size: 64,
            device: tch::Device::Cpu,
            seed: 0,
            ..Config::default()
        };
        run(&cfg).map_err(|e| e.to_string()).expect("training runs")
    });
    let losses = &report.epoch_losses;
    assert_eq!(losses.len(), 4);
    assert!(report.step_losses.iter().all(|l| l.is_finite()));
    // Chance level for 4 classes is ln 4 = 1.386.
    assert!(
        losses[3] < 0.75 * losses[0] && losses[3] < 1.2,
        "the loss did not fall: {losses:?}"
    );
}
