//! A seeded short training on the procedural data learns to segment: test Dice with the true
//! notes well above what the untrained model scores.

use burn::tensor::Device;
use reclmis::demo::{DemoConfig, datasets};
use reclmis::eval::{TextMode, evaluate};
use reclmis::train::Trainer;

#[test]
fn short_training_on_procedural_data_learns_to_segment() {
    let cfg = DemoConfig {
        image_size: 48,
        base_channels: 16,
        n_train: 400,
        n_val: 16,
        n_test: 64,
        epochs: 5,
        batch_size: 16,
        lr: 1e-3,
        ..DemoConfig::default()
    };
    let (train, val, test) = datasets(&cfg);
    let tc = cfg.train_config();
    let device = Device::flex().autodiff();
    let mut t = Trainer::new(tc.clone(), None, None, false, &device).unwrap();
    let before = evaluate(&t.model, &tc.model, &test, TextMode::Given, 1, 32);
    t.run(&train, &val, &mut |_| {}).unwrap();
    let given = evaluate(&t.model, &tc.model, &test, TextMode::Given, 1, 32);
    let shuffled = evaluate(&t.model, &tc.model, &test, TextMode::Shuffled, 1, 32);
    println!(
        "test Dice: untrained {:.3}, trained {:.3} (true notes), {:.3} (shuffled notes)",
        before.dice, given.dice, shuffled.dice
    );
    assert!(given.dice > 0.45, "trained Dice {:.3} <= 0.45", given.dice);
    assert!(
        given.dice > before.dice + 0.3,
        "no learning: {:.3} -> {:.3}",
        before.dice,
        given.dice
    );
    let losses: Vec<f64> = t.history.iter().map(|m| m.train_loss).collect();
    assert!(
        losses.last() < losses.first(),
        "training loss did not fall: {losses:?}"
    );
}
