//! Where the tensors live: `cpu` (burn's flex backend with our own kernels, the default) or
//! `gpu[:N]` (burn's wgpu backend with WGSL kernels, in builds with the `gpu` cargo feature; wgpu
//! runs them through Vulkan on Linux, Metal on macOS, DX12 on Windows).
//!
//! On the GPU the conv/BatchNorm blocks run burn's generic ops ([`crate::kernels::enabled`] is
//! false there), so the GPU is compared against the same reference as `RECLMIS_KERNELS=burn`.
//! docs/gpu.md says what runs there today and what does not yet.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// The `--device` flag: `cpu`, `gpu` (the first GPU adapter) or `gpu:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// The Nth GPU adapter, in the order of [`gpus`].
    Gpu(usize),
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::Parse(s.to_string());
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu(0)),
            other => {
                let n = other.strip_prefix("gpu:").ok_or_else(bad)?;
                n.parse().map(Self::Gpu).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Gpu(n) => write!(f, "gpu:{n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected cpu, gpu or gpu:N")]
    Parse(String),
    #[error("--device {0} needs a build with the `gpu` cargo feature; this one has only the CPU")]
    NotBuilt(DeviceChoice),
    #[error("--device {0}: no GPU adapter found (wgpu looks for Vulkan, Metal, DX12 or OpenGL)")]
    NoAdapter(DeviceChoice),
    #[error("--device {choice}: there are only {count} GPU adapter(s), numbered from 0")]
    OutOfRange { choice: DeviceChoice, count: usize },
}

impl DeviceError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Parse(_) => None,
            Self::NotBuilt(_) => Some(
                "rebuild with `cargo build --release -p reclmis-cli --features gpu`, or use \
                 --device cpu"
                    .into(),
            ),
            Self::NoAdapter(_) => Some(
                "install a Vulkan driver: the GPU vendor's, or Mesa's software one (Debian: \
                 `apt-get install mesa-vulkan-drivers libvulkan1`); `vulkaninfo --summary` lists \
                 what the loader sees"
                    .into(),
            ),
            Self::OutOfRange { .. } => Some(
                "`vulkaninfo --summary` lists the Vulkan devices; a software one (lavapipe) is \
                 only offered where there is no hardware GPU"
                    .into(),
            ),
        }
    }
}

/// The `--devices` list of data-parallel training: comma-separated device names, where a bare
/// number `N` stands for `gpu:N` (`0,1` is `gpu:0,gpu:1`). The same device may appear twice
/// (`cpu,cpu`: two model copies taking turns on one CPU, which checks the data-parallel path
/// without a second device).
pub fn parse_list(s: &str) -> Result<Vec<DeviceChoice>, DeviceError> {
    let list: Vec<DeviceChoice> = s
        .split(',')
        .map(|d| {
            let d = d.trim();
            match d.parse::<usize>() {
                Ok(n) => Ok(DeviceChoice::Gpu(n)),
                Err(_) => d.parse(),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(list)
}

/// The devices `--device gpu:N` counts: the adapters of the first graphics API (Vulkan first)
/// that has a hardware GPU, or failing that of the first one with a software adapter (Mesa's
/// lavapipe). Empty without the `gpu` feature or without a driver.
pub fn gpus() -> Vec<Device> {
    #[cfg(feature = "gpu")]
    {
        Device::enumerate(burn::tensor::DeviceType::Wgpu).to_vec()
    }
    #[cfg(not(feature = "gpu"))]
    {
        Vec::new()
    }
}

/// The device `choice` names (without autodiff; call `.autodiff()` to train on it).
pub fn open(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Gpu(_) if !cfg!(feature = "gpu") => Err(DeviceError::NotBuilt(choice)),
        DeviceChoice::Gpu(n) => {
            let all = gpus();
            match all.len() {
                0 => Err(DeviceError::NoAdapter(choice)),
                count if n >= count => Err(DeviceError::OutOfRange { choice, count }),
                _ => Ok(all[n].clone()),
            }
        }
    }
}

/// Whether `device` is the CPU (burn's flex backend, where our kernels run).
pub fn is_cpu(device: &Device) -> bool {
    matches!(
        device.as_dispatch().clone().inner(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// Whether `device` computes float64 natively: the CPU does; wgpu's shaders do not.
pub fn has_f64(device: &Device) -> bool {
    is_cpu(device)
}

/// A short name for reports: `cpu`, or the adapter's own name (`llvmpipe (LLVM 15.0.6, 256
/// bits)`, `NVIDIA H100 PCIe`). Opens a GPU device.
pub fn describe(device: &Device) -> String {
    #[cfg(feature = "gpu")]
    if let Some(id) = device.identity() {
        return id.name;
    }
    let _ = device;
    "cpu".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("gpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu(0));
        assert_eq!(
            "GPU:2".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Gpu(2)
        );
        for bad in ["", "cuda", "gpu:", "gpu:-1", "gpu:x", "cpu:0"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(
                e.to_string().contains("expected cpu, gpu or gpu:N"),
                "{bad}: {e}"
            );
        }
        assert_eq!(DeviceChoice::Gpu(1).to_string(), "gpu:1");
    }

    #[test]
    fn parses_the_device_list() {
        use DeviceChoice::*;
        assert_eq!(parse_list("0,1").unwrap(), [Gpu(0), Gpu(1)]);
        assert_eq!(parse_list("cpu, cpu").unwrap(), [Cpu, Cpu]);
        assert_eq!(parse_list("gpu:2,3,cpu").unwrap(), [Gpu(2), Gpu(3), Cpu]);
        for bad in ["", "0,", "0,,1", "1,x"] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_is_flex() {
        let d = open(DeviceChoice::Cpu).unwrap();
        assert_eq!(d, Device::flex());
        assert_eq!(describe(&d), "cpu");
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn a_cpu_build_refuses_the_gpu_naming_the_feature() {
        let e = open(DeviceChoice::Gpu(0)).unwrap_err();
        assert!(e.to_string().contains("`gpu` cargo feature"), "{e}");
        assert!(e.hint().unwrap().contains("--features gpu"));
    }
}
