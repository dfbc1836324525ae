//! Where and in what precision models run (`--device`, `--dtype`).

use std::str::FromStr;

use crate::error::{Error, Result};

/// `--device cpu|cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--device must be cpu, cuda or cuda:N, got '{other}'"
                    ))
                }),
        }
    }
}

/// `--dtype auto|f32|bf16|f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeSpec {
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl FromStr for DTypeSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeSpec::Auto),
            "f32" | "float32" => Ok(DTypeSpec::F32),
            "bf16" | "bfloat16" => Ok(DTypeSpec::Bf16),
            "f16" | "float16" => Ok(DTypeSpec::F16),
            other => Err(Error::InvalidArgument(format!(
                "--dtype must be auto, f32, bf16 or f16, got '{other}'"
            ))),
        }
    }
}

/// A `--dtype` resolved for a device; `Auto` (CUDA only) leaves the choice to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
    Auto,
}

impl DTypeSpec {
    /// The dtype to load with on `device`. On CPU, `auto` means F32: F16 drifts ~8e-4 from
    /// the reference and BF16 (bf16 weights, f32 activations in the packed backend) ~1e-3 in
    /// cosine, so F32 is the only exact choice there.
    pub fn resolve(self, device: DeviceSpec) -> Result<Precision> {
        use Precision as M;
        match (device, self) {
            (DeviceSpec::Cpu, DTypeSpec::Auto | DTypeSpec::F32) => Ok(M::F32),
            (DeviceSpec::Cpu, DTypeSpec::Bf16) => Ok(M::Bf16),
            (DeviceSpec::Cpu, DTypeSpec::F16) => Ok(M::F16),
            (DeviceSpec::Cuda(_), DTypeSpec::Auto) => Ok(M::Auto),
            (DeviceSpec::Cuda(_), DTypeSpec::F32) => Ok(M::F32),
            (DeviceSpec::Cuda(_), DTypeSpec::Bf16) => Ok(M::Bf16),
            (DeviceSpec::Cuda(_), DTypeSpec::F16) => Ok(M::F16),
        }
    }

    /// The candle dtype for semflow's packed backend (same rules as [`Self::resolve`]; `auto`
    /// on CUDA is BF16, what Qwen3 checkpoints are trained and stored in).
    pub fn candle(self, device: DeviceSpec) -> Result<candle_core::DType> {
        use candle_core::DType as D;
        Ok(match self.resolve(device)? {
            Precision::F32 => D::F32,
            Precision::F16 => D::F16,
            Precision::Bf16 | Precision::Auto => D::BF16,
        })
    }

    /// The candle device for `device`; CUDA needs the `cuda` feature.
    pub fn device(device: DeviceSpec) -> Result<candle_core::Device> {
        match device {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| {
                Error::InvalidArgument(format!(
                    "--device cuda:{n}: {e} (CUDA needs a build with --features cuda and an NVIDIA driver)"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("tpu"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .to_string()
            .contains("--device"));
        assert_eq!("BF16".parse::<DTypeSpec>().unwrap(), DTypeSpec::Bf16);
        assert_eq!(
            DTypeSpec::Bf16.resolve(DeviceSpec::Cpu).unwrap(),
            Precision::Bf16
        );
        assert_eq!(
            DTypeSpec::Auto.resolve(DeviceSpec::Cpu).unwrap(),
            Precision::F32
        );
    }
}
