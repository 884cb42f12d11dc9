//! Adam as burn's `AdamConfig` builds it, with one fused pass per parameter on the CPU kernels'
//! device ([`crate::kernels::cpu::adam_update`]) instead of eleven tensor ops. Its state is
//! burn's own `AdamState`, so optimiser records (and the runs that saved them) are unchanged,
//! and every other device goes through burn's `Adam` itself.

use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{Device, Tensor};

use crate::kernels;

const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;

/// Adam with betas 0.9 / 0.999, no weight decay, no AMSGrad.
#[derive(Clone)]
pub struct FusedAdam {
    epsilon: f32,
    /// burn's implementation, for devices without our kernels.
    reference: Adam,
}

impl FusedAdam {
    pub fn new(epsilon: f32) -> Self {
        Self {
            epsilon,
            reference: AdamConfig::new()
                .with_beta_1(BETA_1)
                .with_beta_2(BETA_2)
                .with_epsilon(epsilon)
                .build(),
        }
    }

    /// The optimiser of a whole module.
    pub fn init(epsilon: f32) -> ModuleOptimizer {
        ModuleOptimizer::from(Self::new(epsilon))
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if !kernels::enabled(&tensor.device()) {
            return self.reference.step(lr, tensor, grad, state);
        }
        // The first step starts from zero moments: 0·β + x is exactly x, as burn's first step.
        let (time, moments) = match state {
            Some(s) => (s.momentum.time, (s.momentum.moment_1, s.momentum.moment_2)),
            None => (0, (tensor.zeros_like(), tensor.zeros_like())),
        };
        let time = time + 1;
        let t = time as i32;
        let bc2 = (1.0 - BETA_2.powi(t)).sqrt();
        let combined = bc2 / (1.0 - BETA_1.powi(t));
        let (p, m1, m2) = kernels::adam(
            tensor,
            grad,
            moments,
            lr,
            (BETA_1 as f64, BETA_2 as f64),
            combined as f64,
            (self.epsilon * bc2) as f64,
        );
        let state = AdamState::new(AdaptiveMomentumState::new(time, m1, m2));
        (p, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsParams;

    use super::*;
    use crate::model::init::Init;
    use crate::model::nn::Linear;
    use crate::model::to_vec;

    fn params(m: &Linear) -> Vec<u32> {
        let mut v = to_vec(&m.weight.val());
        v.extend(to_vec(&m.bias.val()));
        v.into_iter().map(f32::to_bits).collect()
    }

    struct Problem {
        m: Linear,
        x: Tensor<2>,
        t: Tensor<2>,
    }

    impl Problem {
        fn new() -> Self {
            let device = Device::flex().autodiff();
            let mut init = Init::new(5, &device);
            Self {
                m: Linear::new(37, 11, &mut init),
                x: init.uniform([64, 37], 1.0).val(),
                t: init.uniform([64, 11], 1.0).val(),
            }
        }

        /// One step of `optim` on a least-squares loss at a step-dependent rate.
        fn step(&self, m: Linear, optim: &mut ModuleOptimizer, step: usize) -> Linear {
            let loss = (m.forward(self.x.clone()) - self.t.clone())
                .powi_scalar(2)
                .sum();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            optim.step(1e-2 * (step + 1) as f64, m, grads)
        }
    }

    #[test]
    fn fused_adam_is_bit_identical_to_burns_and_shares_its_records() {
        assert!(kernels::enabled(&Device::flex().autodiff()));
        let burn_adam = || AdamConfig::new().with_epsilon(1e-8).init();
        let p = Problem::new();
        let (mut ours, mut theirs) = (FusedAdam::init(1e-8), burn_adam());
        let (mut a, mut b) = (p.m.clone(), p.m.clone());
        for step in 0..3 {
            a = p.step(a, &mut ours, step);
            b = p.step(b, &mut theirs, step);
            assert_eq!(params(&a), params(&b), "parameters after step {step}");
        }
        // Our saved state continues in burn's Adam exactly as in ours, and the other way round.
        let bytes = ours.into_bytes().expect("record");
        let mut theirs_from_ours = burn_adam().from_bytes(bytes.clone()).expect("loads");
        let mut ours_from_ours = FusedAdam::init(1e-8).from_bytes(bytes).expect("loads");
        let mut ours_from_theirs = FusedAdam::init(1e-8)
            .from_bytes(theirs.into_bytes().expect("record"))
            .expect("loads");
        let want = params(&p.step(a.clone(), &mut ours_from_ours, 3));
        assert_eq!(params(&p.step(a.clone(), &mut theirs_from_ours, 3)), want);
        assert_eq!(params(&p.step(a, &mut ours_from_theirs, 3)), want);
    }
}
