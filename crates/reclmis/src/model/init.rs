//! Seeded parameter initialisation with PyTorch's default distributions (docs §2).
//!
//! Values come from our own SplitMix64 stream, so a seed gives the same model on every machine
//! and backend and with every crate version.

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Shape, Tensor, TensorData};

use crate::rng::SplitMix64;

pub struct Init {
    rng: SplitMix64,
    device: Device,
    next_id: u64,
}

/// Parameter ids are assigned in construction order from this base, so the same config always
/// gives the same ids and optimiser state saved by one process applies to a model built by
/// another (`--resume`).
const PARAM_ID_BASE: u64 = 0x5EC1_0000_0000;

impl Init {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            device: device.clone(),
            next_id: PARAM_ID_BASE,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn unit(&mut self) -> f32 {
        (self.rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn param<const D: usize>(&mut self, t: Tensor<D>) -> Param<Tensor<D>> {
        let (_, value, mapper) = Param::from_tensor(t).consume();
        self.next_id += 1;
        Param::from_mapped_value(ParamId::from(self.next_id), value, mapper)
    }

    pub fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, Shape::from(shape)), &self.device)
    }

    /// `U(-bound, bound)`.
    pub fn uniform<const D: usize>(&mut self, shape: [usize; D], bound: f32) -> Param<Tensor<D>> {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| (2.0 * self.unit() - 1.0) * bound).collect();
        let t = self.tensor(values, shape);
        self.param(t)
    }

    /// `N(0, std)` (Box-Muller).
    pub fn normal<const D: usize>(&mut self, shape: [usize; D], std: f32) -> Param<Tensor<D>> {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|_| {
                let u1 = self.unit().max(1e-7);
                let u2 = self.unit();
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        let t = self.tensor(values, shape);
        self.param(t)
    }

    pub fn constant<const D: usize>(&mut self, shape: [usize; D], value: f32) -> Param<Tensor<D>> {
        let t = Tensor::full(shape, value, &self.device);
        self.param(t)
    }
}
