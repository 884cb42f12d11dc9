//! Named access to the model's tensors: the authors' state-dict key of every parameter and
//! BatchNorm buffer, for import, export and our checkpoint format.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Shape, Tensor, TensorData};

/// The only places where a Rust field name differs from the authors' key segment.
const RENAMES: &[(&str, &str)] = &[
    ("n_convs", "nConvs"),
    ("pix_module", "pixModule"),
    ("ctbn", "CTBN"),
    ("layer0", "0"),
    ("layer2", "2"),
];

fn key_segment(name: &str) -> &str {
    RENAMES
        .iter()
        .find(|(rust, _)| *rust == name)
        .map_or(name, |(_, key)| key)
}

/// A host tensor with its shape, float32.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tracks the dotted key while a visitor or mapper walks the module tree.
#[derive(Default)]
struct KeyPath(Vec<String>);

impl KeyPath {
    fn enter(&mut self, name: &str) {
        self.0.push(key_segment(name).to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn key(&self) -> String {
        self.0.join(".")
    }
}

struct Collect {
    path: KeyPath,
    out: Vec<(String, HostTensor)>,
    shapes_only: bool,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = if self.shapes_only {
            Vec::new()
        } else {
            super::to_vec(&t)
        };
        self.out.push((self.path.key(), HostTensor { shape, data }));
    }
}

/// Every float tensor of a module (parameters and running statistics) under its state-dict key,
/// in declaration order.
pub fn named_tensors<M: Module>(module: &M) -> Vec<(String, HostTensor)> {
    let mut c = Collect {
        path: KeyPath::default(),
        out: Vec::new(),
        shapes_only: false,
    };
    module.visit(&mut c);
    c.out
}

/// Keys and shapes only (no data copied).
pub fn named_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut c = Collect {
        path: KeyPath::default(),
        out: Vec::new(),
        shapes_only: true,
    };
    module.visit(&mut c);
    c.out.into_iter().map(|(k, t)| (k, t.shape)).collect()
}

/// Gradients of every float parameter that received one, under its state-dict key.
pub fn named_grads<M: Module>(
    module: &M,
    grads: &burn::tensor::Gradients,
) -> Vec<(String, HostTensor)> {
    grads_by_key(module, Grads::Backward(grads))
}

/// [`named_grads`] for gradients already collected per parameter (what an optimiser takes,
/// and what data-parallel training sums over devices).
pub fn named_param_grads<M: Module>(
    module: &M,
    grads: &burn::optim::GradientsParams,
) -> Vec<(String, HostTensor)> {
    grads_by_key(module, Grads::Params(grads))
}

enum Grads<'a> {
    Backward(&'a burn::tensor::Gradients),
    Params(&'a burn::optim::GradientsParams),
}

fn grads_by_key<M: Module>(module: &M, grads: Grads) -> Vec<(String, HostTensor)> {
    struct G<'a> {
        path: KeyPath,
        grads: Grads<'a>,
        out: Vec<(String, HostTensor)>,
    }
    impl ModuleVisitor for G<'_> {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _name: &str, _c: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = match self.grads {
                Grads::Backward(g) => param.val().grad(g),
                Grads::Params(g) => g.get::<D>(param.id),
            };
            if let Some(g) = g {
                let shape = g.dims().to_vec();
                let data = super::to_vec(&g);
                self.out.push((self.path.key(), HostTensor { shape, data }));
            }
        }
    }
    let mut v = G {
        path: KeyPath::default(),
        grads,
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("tensor '{key}' has shape {found:?}, the model expects {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor '{key}' has {found} values for shape {shape:?}")]
    Size {
        key: String,
        shape: Vec<usize>,
        found: usize,
    },
    #[error("tensor '{key}' holds a non-finite value")]
    NonFinite { key: String },
    #[error("missing {count} tensor(s), first '{first}'")]
    Missing { first: String, count: usize },
}

/// What a load changed.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Model keys the source did not have (left as they were).
    pub missing: Vec<String>,
    /// Source keys the model has no place for.
    pub unused: Vec<String>,
}

struct Load<'a> {
    path: KeyPath,
    source: &'a HashMap<String, HostTensor>,
    used: std::collections::HashSet<String>,
    missing: Vec<String>,
    error: Option<WeightsError>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.key();
        let Some(src) = self.source.get(&key) else {
            self.missing.push(key);
            return param;
        };
        if self.error.is_some() {
            return param;
        }
        let expected = param.val().dims().to_vec();
        // A leading `[1]` axis may be absent or present (scalars such as `logit_scale`).
        let same = src.shape == expected
            || (src.shape.is_empty() && expected == [1])
            || (expected.is_empty() && src.shape == [1]);
        if !same {
            self.error = Some(WeightsError::Shape {
                key,
                expected,
                found: src.shape.clone(),
            });
            return param;
        }
        if src.data.len() != expected.iter().product::<usize>() {
            self.error = Some(WeightsError::Size {
                key,
                shape: src.shape.clone(),
                found: src.data.len(),
            });
            return param;
        }
        if src.data.iter().any(|v| !v.is_finite()) {
            self.error = Some(WeightsError::NonFinite { key });
            return param;
        }
        let old = param.val();
        let t = Tensor::<D>::from_data(
            TensorData::new(src.data.clone(), Shape::from(expected)),
            &old.device(),
        );
        let t = if old.is_require_grad() {
            t.require_grad()
        } else {
            t
        };
        self.used.insert(key);
        let (id, _, mapper) = param.consume();
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Copies every tensor of `source` whose key the module has into the module. Nothing is changed
/// when any tensor disagrees in shape or holds NaN/Inf.
pub fn load_tensors<M: Module + Clone>(
    module: M,
    source: &HashMap<String, HostTensor>,
) -> Result<(M, LoadReport), WeightsError> {
    let mut mapper = Load {
        path: KeyPath::default(),
        source,
        used: Default::default(),
        missing: Vec::new(),
        error: None,
    };
    // Validate first on a clone, so a bad source leaves the caller's module untouched.
    let loaded = module.clone().map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    let mut unused: Vec<String> = source
        .keys()
        .filter(|k| !mapper.used.contains(*k))
        .cloned()
        .collect();
    unused.sort();
    Ok((
        loaded,
        LoadReport {
            loaded: mapper.used.len(),
            missing: mapper.missing,
            unused,
        },
    ))
}
