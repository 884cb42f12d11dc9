use burn::tensor::{Device, Tensor};
use reclmis::model::init::Init;
use reclmis::model::reconstructor::DualTransformer;
use std::time::Instant;
fn main() {
    let device = Device::flex().autodiff();
    let mut init = Init::new(1, &device);
    let m = DualTransformer::new(512, 4, 4, &mut init);
    let img: Tensor<3> = init.uniform([4, 196, 512], 1.0).val().require_grad();
    let txt: Tensor<3> = init.uniform([4, 18, 512], 1.0).val().require_grad();
    let w: Tensor<2> = init.uniform([4, 196], 1.0).val().abs();
    for _ in 0..6 {
        let t0 = Instant::now();
        let y = m.forward(img.clone(), txt.clone(), &w, true, 0.1, true);
        let l = y.powi_scalar(2).mean();
        let _ = l.clone().into_data();
        let t1 = t0.elapsed().as_secs_f64();
        let _g = l.backward();
        eprintln!("fwd {:.3} total {:.3}", t1, t0.elapsed().as_secs_f64());
    }
}
