//! From a foreign state dict to the model's tensors.

use std::collections::HashMap;

use super::torch::StateDict;
use crate::model::weights::HostTensor;

/// The float tensors the model can hold. Integer buffers (`num_batches_tracked`) and the CLIP
/// visual tower, which RecLMIS never runs (§7 #23), are left out.
pub fn host_tensors(sd: &StateDict) -> HashMap<String, HostTensor> {
    sd.tensors
        .iter()
        .filter(|(k, t)| t.ints.is_none() && !k.starts_with("clip.visual."))
        .map(|(k, t)| {
            (
                k.clone(),
                HostTensor {
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                },
            )
        })
        .collect()
}
