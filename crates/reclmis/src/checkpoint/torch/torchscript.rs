//! TorchScript archives (OpenAI's `ViT-B-32.pt`): parameters named by their attribute path.

use std::path::Path;

use super::archive::{Archive, SpecError, TensorSpec, tensor_spec};
use super::pickle::Value;
use super::{Result, StateDict, TorchError};

/// Parameters and buffers of a TorchScript archive (OpenAI's `ViT-B-32.pt` form), named by their
/// attribute path from the root module: `transformer.resblocks.0.attn.in_proj_weight`, ….
pub fn read_torchscript(path: &Path) -> Result<StateDict> {
    let mut archive = Archive::open(path)?;
    let root = archive.data_pkl()?;
    if !is_torchscript_root(&root) {
        return Err(TorchError::Structure {
            path: path.into(),
            what: format!(
                "the pickled top-level value is {}, not a TorchScript module (a torch.save file? use read_checkpoint)",
                root.type_name()
            ),
        });
    }
    let mut specs = Vec::new();
    walk_module(path, &root, "", &mut specs)?;
    if specs.is_empty() {
        return Err(TorchError::Structure {
            path: path.into(),
            what: "the TorchScript module holds no tensors".into(),
        });
    }
    archive.materialise(specs)
}

pub(super) fn is_torchscript_root(v: &Value) -> bool {
    v.as_object()
        .and_then(|o| o.global())
        .is_some_and(|(m, _)| m.starts_with("__torch__"))
}

/// Depth-first over a scripted module's attributes, in their pickled order: tensors are named
/// by their attribute path, `__torch__.*` objects are descended into, everything else is skipped.
fn walk_module(
    path: &Path,
    module: &Value,
    prefix: &str,
    out: &mut Vec<(String, TensorSpec)>,
) -> Result<()> {
    let Some(attrs) = module
        .as_object()
        .and_then(|o| o.state.as_ref())
        .and_then(|s| s.as_dict())
    else {
        return Ok(());
    };
    for (k, v) in attrs {
        let Some(name) = k.as_str() else { continue };
        let key = format!("{prefix}{name}");
        if is_torchscript_root(v) {
            walk_module(path, v, &format!("{key}."), out)?;
            continue;
        }
        match tensor_spec(v) {
            Ok(Some(spec)) => out.push((key, spec)),
            // Non-tensor attributes (flags, hooks, ints, objects of other classes) carry no weights.
            Ok(None) | Err(SpecError::Global(_)) => {}
            Err(e) => return Err(e.at(path, &key)),
        }
    }
    Ok(())
}
