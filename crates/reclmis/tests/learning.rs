//! A seeded short demo training on the procedural data learns to segment and to read the notes:
//! with the true notes its test Dice clears a bar that segmenting every opacity cannot, and it
//! loses a margin when each image gets another image's note.

use reclmis::demo::{DemoConfig, run};

#[test]
fn short_training_on_procedural_data_learns_to_read_the_notes() {
    let cfg = DemoConfig {
        n_val: 32,
        n_test: 96,
        epochs: 12,
        aux_from_epoch: 8,
        ..DemoConfig::default()
    };
    let outcome = run(&cfg, None, &mut |_| {}).unwrap();
    let r = &outcome.report;
    println!(
        "test Dice {:.3} (true notes), {:.3} (shuffled), {:.3} (empty); {:.0} s",
        r.dice_true, r.dice_shuffled, r.dice_empty, r.train_seconds
    );
    let losses: Vec<f64> = r.history.iter().map(|m| m.train_criterion).collect();
    assert!(
        losses.last() < losses.first(),
        "segmentation loss did not fall: {losses:?}"
    );
    assert!(
        r.history.iter().filter(|m| m.aux).count() == cfg.epochs - cfg.aux_from_epoch,
        "the auxiliary losses did not join at epoch {}",
        cfg.aux_from_epoch + 1
    );
    assert!(
        r.dice_true > TRUE_MIN,
        "Dice {:.3} <= {TRUE_MIN}",
        r.dice_true
    );
    assert!(
        r.dice_true - r.dice_shuffled > MARGIN_MIN,
        "shuffled notes cost only {:.3} Dice (true {:.3}, shuffled {:.3})",
        r.dice_true - r.dice_shuffled,
        r.dice_true,
        r.dice_shuffled
    );
}

/// Segmenting every opacity, lesion or distractor, scores about 0.67 on this data (the demo's
/// plateau before it reads the notes, and its Dice with one note for every image). Seeds 7, 1
/// and 2 of this configuration scored 0.774 / 0.737 / 0.706 with the true notes, and lost
/// 0.201 / 0.189 / 0.154 with shuffled ones (seed 7 here; 1 and 2 with `reclmis demo`).
const TRUE_MIN: f64 = 0.68;
/// Dice lost with another image's note.
const MARGIN_MIN: f64 = 0.10;
