use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use reclmis::model::{Branches, ModelConfig, RecLMIS, TokenBatch, to_vec};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (s, base, b, rec, tl) = (args[0], args[1], args[2], args[3], args[4]);
    let mut cfg = ModelConfig::qata();
    cfg.image_size = s;
    cfg.base_channels = base;
    cfg.rec_layers = rec;
    let cfg = cfg.with_builtin_text(tl);
    let device = Device::flex().autodiff();
    let mut model = RecLMIS::new(&cfg, 3, &device);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let img: Vec<f32> = (0..b * 3 * s * s)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let mask: Vec<f32> = (0..b * s * s)
        .map(|i| ((i % 7 == 0) as u8) as f32)
        .collect();
    let rows: Vec<Vec<i64>> = (0..b)
        .map(|i| {
            let mut r = vec![0i64; 18];
            r[0] = 49406;
            r[1] = 100 + i as i64;
            r[2] = 200;
            r[3] = 49407;
            r
        })
        .collect();
    let tokens = TokenBatch::new(&rows);
    for it in 0..4 {
        let t0 = Instant::now();
        let images = Tensor::<4>::from_data(TensorData::new(img.clone(), [b, 3, s, s]), &device);
        let target = Tensor::<3>::from_data(TensorData::new(mask.clone(), [b, s, s]), &device);
        let tfc = model.encode_text(&cfg, &tokens, true);
        let out = model.forward(&cfg, images, tfc, &tokens, Branches::Aux { seed: it }, true);
        let losses = model.losses(&cfg, &out, target);
        let l = to_vec(&losses.total)[0];
        let t1 = t0.elapsed();
        let grads = losses.total.backward();
        let t2 = t0.elapsed();
        let gp = GradientsParams::from_grads(grads, &model);
        model = optim.step(3e-4, model, gp);
        let _ = to_vec(&model.outc.weight.val());
        println!(
            "step {it}: loss {l:.4} fwd {:.3}s fwd+bwd {:.3}s total {:.3}s",
            t1.as_secs_f64(),
            t2.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    }
    let _ = model.valid();
}
