//! The kernel choice a caller passes with a call: [`Kernels`] (a field of
//! [`crate::AttnSpec`] and [`crate::DotSpec`]), `Auto` by default, and the per-part options it
//! holds. Only CUDA calls read it; the CPU kernels have one implementation each.

use crate::AttnError;

/// Whether kernel outputs are filled with NaN before the kernel that writes them runs, unless a
/// call says otherwise: in debug builds and with the `poison-outputs` feature (the GPU test
/// bundle), so that a test sees any element a kernel leaves unwritten. Costs one memset per
/// output.
pub const POISON_BY_DEFAULT: bool = cfg!(debug_assertions) || cfg!(feature = "poison-outputs");

/// Which compiled CUDA kernels run a call. `Kernels::default()` (every part automatic, as
/// measured: [`crate::kernels::dispatch`]) is what every caller wants outside comparisons and
/// tests; the other values force a kernel family where it covers the call (where it does not,
/// the automatic choice runs) or turn on a debugging aid.
///
/// Text form (the CLI's `--kernels`, [`Kernels::from_str`](std::str::FromStr)): `auto`, or
/// comma-separated `key=value` pairs: `tensor-cores=on|off`, `deterministic=on|off`,
/// `forward=auto|tj2|pp|producer|offsets`, `bwd-wgmma=auto|0|q|p`,
/// `bwd-offsets=auto|0|q|k|1`, `moe=auto|grouped|per-expert`, `dot-bwd=auto|split|fused`,
/// `poison=on|off`, `timing=on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// Use the tensor-core kernels where they cover the call (default on). Off: every call runs
    /// the CUDA-core kernels (tests compare the two).
    pub tensor_cores: bool,
    /// Run the deterministic backward (no atomics, bitwise-equal results run to run) even where
    /// a faster one covers the call (default off): for 2-simplicial attention the CUDA-core
    /// kernels (the tensor-core backward adds dk1 and dv1, the small window's set, with f32
    /// atomics), for dot-product attention the split wgmma kernels (the fused one at D = 128
    /// adds dq's partial sums with the TMA's f32 bulk adds). With atomics the last bits of
    /// those gradients may differ between runs.
    pub deterministic: bool,
    /// The layout of the 2-simplicial tensor-core forward; `None` (the default) picks
    /// [`ForwardVariant::fastest`] per call.
    pub forward: Option<ForwardVariant>,
    /// Which tensor-core backward kernels of 2-simplicial attention run on wgmma.
    pub wgmma_backward: WgmmaBackward,
    /// Which parts of the 2-simplicial backward run the offset walk.
    pub offsets_backward: OffsetsBackward,
    /// How the routed experts' products of an MoE layer run on CUDA.
    pub moe: ExpertProducts,
    /// Which tensor-core backward of dot-product attention runs.
    pub dot_backward: DotBackwardKernels,
    /// Fill every output with NaN before its kernel runs (default [`POISON_BY_DEFAULT`]).
    pub poison_outputs: bool,
    /// Print the time of each 2-simplicial tensor-core backward launch to stderr (the stream is
    /// synchronized around each, so for breakdowns, not totals; default off).
    pub time_backward: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels {
            tensor_cores: true,
            deterministic: false,
            forward: None,
            wgmma_backward: WgmmaBackward::Auto,
            offsets_backward: OffsetsBackward::Auto,
            moe: ExpertProducts::Auto,
            dot_backward: DotBackwardKernels::Auto,
            poison_outputs: POISON_BY_DEFAULT,
            time_backward: false,
        }
    }
}

/// How the grouped products of an MoE layer's routed experts (`simplex_attn::moe`) run on
/// CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertProducts {
    /// [`ExpertProducts::choose`] per call.
    Auto,
    /// One launch per projection over all experts (`kernels/moe.cu`): each thread block finds
    /// its expert from the offsets on the device, so nothing waits for the device.
    Grouped,
    /// One cuBLAS product per expert that has rows: the offsets are read to the host once per
    /// layer and batch (one device synchronization), then each product is cuBLAS's.
    PerExpert,
}

impl ExpertProducts {
    /// Most experts for which [`ExpertProducts::Auto`] takes one cuBLAS product per expert.
    /// Measured (H100, 32K tokens, the routed layer forward+backward, docs/moe.md): per expert
    /// 2.88 / 3.04 / 4.04 / 6.38 ms against grouped 3.55 / 3.66 / 4.18 / 5.66 at 8 / 16 / 32 /
    /// 64 experts: beyond 32 the launches of small products cost more than one grouped launch.
    pub const PER_EXPERT_MAX: usize = 32;

    /// What `Auto` runs for `experts` experts in `dtype`: per-expert cuBLAS products for bf16
    /// with at most [`Self::PER_EXPERT_MAX`] experts, else the grouped kernels; a forced choice
    /// as given.
    pub fn choose(self, experts: usize, dtype: candle_core::DType) -> ExpertProducts {
        match self {
            ExpertProducts::Auto
                if dtype == candle_core::DType::BF16 && experts <= Self::PER_EXPERT_MAX =>
            {
                ExpertProducts::PerExpert
            }
            ExpertProducts::Auto => ExpertProducts::Grouped,
            other => other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ExpertProducts::Auto => "auto",
            ExpertProducts::Grouped => "grouped",
            ExpertProducts::PerExpert => "per-expert",
        }
    }
}

impl std::str::FromStr for ExpertProducts {
    type Err = AttnError;

    /// `auto`, `grouped` or `per-expert`.
    fn from_str(s: &str) -> Result<Self, AttnError> {
        Ok(match s {
            "auto" => ExpertProducts::Auto,
            "grouped" => ExpertProducts::Grouped,
            "per-expert" => ExpertProducts::PerExpert,
            other => return Err(bad_value("moe", other, "auto, grouped or per-expert")),
        })
    }
}

/// Which tensor-core backward of dot-product attention runs (bf16, D = Dv in {64, 128}).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotBackwardKernels {
    /// [`DotBackwardKernels::choose`] per call.
    Auto,
    /// A dq kernel, then a dk/dv kernel, each computing P and dS (seven products per step of
    /// work); deterministic: every block owns the gradient rows it writes.
    Split,
    /// One kernel computing dk, dv and dq's partial sums (five products), which the TMA adds
    /// into an f32 buffer (`cp.reduce.async.bulk`), then a rounding pass; D = 128 with a GQA
    /// ratio dividing 64 (elsewhere the split kernels run). Not deterministic: the order of
    /// the f32 additions varies run to run.
    Fused,
}

impl DotBackwardKernels {
    /// Whether the fused backward covers a call with head dim `d` and GQA ratio `group`.
    pub fn fused_covers(d: usize, group: usize) -> bool {
        d == 128 && group > 0 && crate::kernels::tma::DKV_STEP_ROWS.is_multiple_of(group)
    }

    /// What runs a call with head dim `d` and GQA ratio `group`: `Auto` takes the fused
    /// kernel where it covers the call (measured faster at D = 128: H100, 2026-12-07,
    /// docs/kernels.md), unless `deterministic`; `Split`, `deterministic` or a call the fused
    /// kernel does not cover take the split kernels.
    pub fn choose(self, d: usize, group: usize, deterministic: bool) -> DotBackwardKernels {
        match self {
            DotBackwardKernels::Auto | DotBackwardKernels::Fused
                if Self::fused_covers(d, group) && !deterministic =>
            {
                DotBackwardKernels::Fused
            }
            _ => DotBackwardKernels::Split,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DotBackwardKernels::Auto => "auto",
            DotBackwardKernels::Split => "split",
            DotBackwardKernels::Fused => "fused",
        }
    }
}

impl std::str::FromStr for DotBackwardKernels {
    type Err = AttnError;

    /// `auto`, `split` or `fused`.
    fn from_str(s: &str) -> Result<Self, AttnError> {
        Ok(match s {
            "auto" => DotBackwardKernels::Auto,
            "split" => DotBackwardKernels::Split,
            "fused" => DotBackwardKernels::Fused,
            other => return Err(bad_value("dot-bwd", other, "auto, split or fused")),
        })
    }
}

/// Which compiled layout of the 2-simplicial tensor-core forward runs (bf16, D = Dv in
/// {64, 128}).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardVariant {
    /// `simplicial_fwd_wgmma.cu`, 64 rows per block: one warpgroup computes logits and softmax,
    /// the other the values, handing P over through shared memory every two window-1
    /// positions (`TJ = 2`).
    Specialized,
    /// `simplicial_fwd_wgmma.cu`, 128 rows per block: each warpgroup computes logits, softmax
    /// and values for its own 64 (one position per step).
    PingPong,
    /// `simplicial_fwd_producer.cu`, 128 rows per block: the ping-pong walk with v1_j folded
    /// into the values operand (O += P @ (V2_tile ∘ v1_j)), which a third, producer,
    /// warpgroup builds in shared memory while the two consumers keep P in registers.
    Producer,
    /// `simplicial_fwd_offsets.cu`, 128 rows per block: steps over window-1 offsets (two per
    /// step at D = 64, one at D = 128), each row with its own window-1 position, so rows of
    /// different queries waste no masked work (for few query heads per K/V head). Needs the
    /// block's window-1 rows in shared memory; where they do not fit, the ping-pong layout
    /// (G >= 8) or the specialized one runs instead.
    Offsets,
}

impl ForwardVariant {
    /// The fastest layout measured for G = Hq/Hkv query heads per K/V head and head dim `d`
    /// (docs/kernels.md): the producer layout from G = 64 at D = 64 and from G = 16 at
    /// D = 128; below, the offset walk.
    pub fn fastest(group: usize, d: usize) -> Self {
        if group >= 64 || (d > 64 && group >= 16) {
            ForwardVariant::Producer
        } else {
            ForwardVariant::Offsets
        }
    }

    fn name(self) -> &'static str {
        match self {
            ForwardVariant::Specialized => "tj2",
            ForwardVariant::PingPong => "pp",
            ForwardVariant::Producer => "producer",
            ForwardVariant::Offsets => "offsets",
        }
    }
}

impl std::str::FromStr for ForwardVariant {
    type Err = AttnError;

    /// `tj2`, `pp`, `producer` or `offsets`.
    fn from_str(s: &str) -> Result<Self, AttnError> {
        Ok(match s {
            "tj2" => ForwardVariant::Specialized,
            "pp" => ForwardVariant::PingPong,
            "producer" => ForwardVariant::Producer,
            "offsets" => ForwardVariant::Offsets,
            other => return Err(bad_value("forward", other, FORWARD_VALUES)),
        })
    }
}

const FORWARD_VALUES: &str = "auto, tj2, pp, producer or offsets";

/// Which tensor-core backward kernels of 2-simplicial attention run: the q kernel (dq, dk1, dv1)
/// on wgmma (`simplicial_bwd_wgmma.cu`, D in {64, 128}) or mma.sync (`simplicial_bwd_mma.cu`),
/// and the k side (dk2, dv2) from the producer kernel (`simplicial_bwd_producer.cu`) or the
/// mma.sync k kernel. All compute the same gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WgmmaBackward {
    /// The faster per kernel as measured (docs/kernels.md): the q kernel on wgmma when
    /// G = Hq/Hkv >= 8; dk2, dv2 from the producer kernel (`simplicial_bwd_producer.cu`) when G
    /// is a multiple of 64, else the mma.sync k kernel.
    #[default]
    Auto,
    /// The q kernel on mma.sync; dk2, dv2 from the mma.sync k kernel.
    Off,
    /// The q kernel on wgmma; dk2, dv2 from the mma.sync k kernel.
    Q,
    /// The q kernel on wgmma, dk2 and dv2 from `simplicial_bwd_producer.cu` where it covers the
    /// call (G a multiple of 64), else from the mma.sync k kernel.
    Producer,
}

impl WgmmaBackward {
    /// Whether the q kernel runs on wgmma for G query heads per K/V head.
    pub(crate) fn wgmma_q(self, group: usize) -> bool {
        match self {
            WgmmaBackward::Auto => group >= 8,
            WgmmaBackward::Off => false,
            WgmmaBackward::Q | WgmmaBackward::Producer => true,
        }
    }

    /// Whether dk2, dv2 come from the producer kernel for G query heads per K/V head.
    pub(crate) fn producer_keys(self, group: usize) -> bool {
        matches!(self, WgmmaBackward::Producer | WgmmaBackward::Auto) && group.is_multiple_of(64)
    }

    fn name(self) -> &'static str {
        match self {
            WgmmaBackward::Auto => "auto",
            WgmmaBackward::Off => "0",
            WgmmaBackward::Q => "q",
            WgmmaBackward::Producer => "p",
        }
    }
}

impl std::str::FromStr for WgmmaBackward {
    type Err = AttnError;

    /// `auto`, `0` (mma.sync throughout), `q` (the wgmma q kernel), `p` (and the producer k side).
    fn from_str(s: &str) -> Result<Self, AttnError> {
        Ok(match s {
            "auto" => WgmmaBackward::Auto,
            "0" => WgmmaBackward::Off,
            "q" => WgmmaBackward::Q,
            "p" => WgmmaBackward::Producer,
            other => return Err(bad_value("bwd-wgmma", other, "auto, 0, q or p")),
        })
    }
}

/// Which parts of the 2-simplicial backward run the offset walk (`simplicial_bwd_offsets.cu`,
/// bf16, D = 64): its q side (the qk1 pass for dq, dk1 and dv1, instead of the q kernel) and its
/// k2 pass (dk2, dv2, instead of the k kernel). Where it does not cover a call (other D, or its
/// staged rows do not fit shared memory) the other kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetsBackward {
    /// As measured (docs/kernels.md): both for G = Hq/Hkv <= 16.
    #[default]
    Auto,
    /// Neither.
    Off,
    /// The q side only.
    Q,
    /// The k2 pass only.
    K,
    /// Both.
    Both,
}

impl OffsetsBackward {
    /// (q side, k2 pass) on the offset walk for G query heads per K/V head.
    pub(crate) fn sides(self, group: usize) -> (bool, bool) {
        match self {
            OffsetsBackward::Auto => (group <= 16, group <= 16),
            OffsetsBackward::Off => (false, false),
            OffsetsBackward::Q => (true, false),
            OffsetsBackward::K => (false, true),
            OffsetsBackward::Both => (true, true),
        }
    }

    fn name(self) -> &'static str {
        match self {
            OffsetsBackward::Auto => "auto",
            OffsetsBackward::Off => "0",
            OffsetsBackward::Q => "q",
            OffsetsBackward::K => "k",
            OffsetsBackward::Both => "1",
        }
    }
}

impl std::str::FromStr for OffsetsBackward {
    type Err = AttnError;

    /// `auto`, `0` (neither), `q` or `k` (that side only), `1` (both).
    fn from_str(s: &str) -> Result<Self, AttnError> {
        Ok(match s {
            "auto" => OffsetsBackward::Auto,
            "0" => OffsetsBackward::Off,
            "q" => OffsetsBackward::Q,
            "k" => OffsetsBackward::K,
            "1" => OffsetsBackward::Both,
            other => return Err(bad_value("bwd-offsets", other, "auto, 0, q, k or 1")),
        })
    }
}

fn bad_value(key: &str, value: &str, expected: &str) -> AttnError {
    AttnError::Config(format!("kernels: {key}={value:?}: expected {expected}"))
}

fn on_off(key: &str, value: &str) -> Result<bool, AttnError> {
    match value {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        other => Err(bad_value(key, other, "on or off")),
    }
}

impl std::str::FromStr for Kernels {
    type Err = AttnError;

    /// `auto` (or nothing) for the default, else comma-separated `key=value` pairs over the
    /// default (keys and values in the type's doc). Unknown keys and values are errors.
    fn from_str(text: &str) -> Result<Self, AttnError> {
        let mut k = Kernels::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "auto" {
                continue;
            }
            let (key, value) = part.split_once('=').ok_or_else(|| {
                AttnError::Config(format!(
                    "kernels: {part:?} is not key=value (pairs are separated by commas)"
                ))
            })?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "tensor-cores" => k.tensor_cores = on_off(key, value)?,
                "deterministic" => k.deterministic = on_off(key, value)?,
                "forward" if value == "auto" => k.forward = None,
                "forward" => k.forward = Some(value.parse()?),
                "bwd-wgmma" => k.wgmma_backward = value.parse()?,
                "bwd-offsets" => k.offsets_backward = value.parse()?,
                "moe" => k.moe = value.parse()?,
                "dot-bwd" => k.dot_backward = value.parse()?,
                "poison" => k.poison_outputs = on_off(key, value)?,
                "timing" => k.time_backward = on_off(key, value)?,
                other => {
                    return Err(AttnError::Config(format!(
                        "kernels: unknown key {other:?} (keys: tensor-cores, deterministic, \
                         forward, bwd-wgmma, bwd-offsets, moe, dot-bwd, poison, timing)"
                    )))
                }
            }
        }
        Ok(k)
    }
}

impl std::fmt::Display for Kernels {
    /// The text form [`Kernels::from_str`](std::str::FromStr) reads back: the pairs that differ
    /// from the default, or `auto`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = Kernels::default();
        let on = |b: bool| if b { "on" } else { "off" };
        let mut parts = Vec::new();
        if self.tensor_cores != d.tensor_cores {
            parts.push(format!("tensor-cores={}", on(self.tensor_cores)));
        }
        if self.deterministic != d.deterministic {
            parts.push(format!("deterministic={}", on(self.deterministic)));
        }
        if let Some(v) = self.forward {
            parts.push(format!("forward={}", v.name()));
        }
        if self.wgmma_backward != d.wgmma_backward {
            parts.push(format!("bwd-wgmma={}", self.wgmma_backward.name()));
        }
        if self.offsets_backward != d.offsets_backward {
            parts.push(format!("bwd-offsets={}", self.offsets_backward.name()));
        }
        if self.moe != d.moe {
            parts.push(format!("moe={}", self.moe.name()));
        }
        if self.dot_backward != d.dot_backward {
            parts.push(format!("dot-bwd={}", self.dot_backward.name()));
        }
        if self.poison_outputs != d.poison_outputs {
            parts.push(format!("poison={}", on(self.poison_outputs)));
        }
        if self.time_backward != d.time_backward {
            parts.push(format!("timing={}", on(self.time_backward)));
        }
        if parts.is_empty() {
            f.write_str("auto")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_dot_backward_runs_only_where_asked_and_covered() {
        use DotBackwardKernels::{Auto, Fused, Split};
        assert_eq!(Auto.choose(128, 4, false), Fused);
        assert_eq!(Auto.choose(128, 4, true), Split);
        assert_eq!(Auto.choose(64, 8, false), Split);
        assert_eq!(Auto.choose(128, 6, false), Split);
        assert_eq!(Fused.choose(128, 4, false), Fused);
        assert_eq!(Fused.choose(128, 1, false), Fused);
        assert_eq!(Fused.choose(128, 64, false), Fused);
        // deterministic, D = 64, a ratio not dividing 64: the split kernels
        assert_eq!(Fused.choose(128, 4, true), Split);
        assert_eq!(Fused.choose(64, 4, false), Split);
        assert_eq!(Fused.choose(128, 3, false), Split);
        assert_eq!(Fused.choose(128, 128, false), Split);
        assert_eq!(Split.choose(128, 4, false), Split);
        let k: Kernels = "dot-bwd=fused".parse().unwrap();
        assert_eq!(k.dot_backward, Fused);
        assert_eq!(k.to_string(), "dot-bwd=fused");
        let e = "dot-bwd=both".parse::<Kernels>().unwrap_err().to_string();
        assert!(e.contains("dot-bwd") && e.contains("split or fused"), "{e}");
    }

    #[test]
    fn auto_takes_per_expert_products_for_few_experts_in_bf16() {
        use candle_core::DType::{BF16, F32};
        let auto = ExpertProducts::Auto;
        assert_eq!(auto.choose(8, BF16), ExpertProducts::PerExpert);
        assert_eq!(auto.choose(32, BF16), ExpertProducts::PerExpert);
        assert_eq!(auto.choose(33, BF16), ExpertProducts::Grouped);
        assert_eq!(auto.choose(8, F32), ExpertProducts::Grouped);
        for forced in [ExpertProducts::Grouped, ExpertProducts::PerExpert] {
            assert_eq!(forced.choose(64, F32), forced);
        }
    }

    #[test]
    fn the_text_form_reads_back_and_bad_values_are_errors() {
        let k: Kernels = "forward=pp, bwd-wgmma=q,bwd-offsets=0,deterministic=on"
            .parse()
            .unwrap();
        assert_eq!(k.forward, Some(ForwardVariant::PingPong));
        assert_eq!(k.wgmma_backward, WgmmaBackward::Q);
        assert_eq!(k.offsets_backward, OffsetsBackward::Off);
        assert!(k.deterministic && k.tensor_cores);
        assert_eq!(k.to_string().parse::<Kernels>().unwrap(), k);
        assert_eq!("auto".parse::<Kernels>().unwrap(), Kernels::default());
        assert_eq!("".parse::<Kernels>().unwrap(), Kernels::default());
        assert_eq!(Kernels::default().to_string(), "auto");
        for v in ["tj2", "pp", "producer", "offsets"] {
            let k: Kernels = format!("forward={v}").parse().unwrap();
            assert_eq!(k.to_string(), format!("forward={v}"));
        }
        let all: Kernels =
            "tensor-cores=off,poison=on,timing=1,bwd-wgmma=p,bwd-offsets=k,moe=per-expert"
                .parse()
                .unwrap();
        assert_eq!(all.to_string().parse::<Kernels>().unwrap(), all);
        for (text, want) in [
            ("forward=pp2", "forward=\"pp2\""),
            ("bwd-wgmma=2", "bwd-wgmma=\"2\""),
            ("moe=cublas", "moe=\"cublas\""),
            ("bwd-offsets=x", "bwd-offsets=\"x\""),
            ("tensor-cores=maybe", "on or off"),
            ("dot=mma", "unknown key \"dot\""),
            ("speed=max", "unknown key \"speed\""),
            ("forward", "not key=value"),
        ] {
            let e = text.parse::<Kernels>().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn the_fastest_forward_is_as_measured() {
        let (producer, offsets) = (ForwardVariant::Producer, ForwardVariant::Offsets);
        for (g, d, want) in [
            (64, 128, producer),
            (128, 128, producer),
            (16, 128, producer),
            (8, 128, offsets),
            (1, 128, offsets),
            (64, 64, producer),
            (32, 64, offsets),
            (1, 64, offsets),
        ] {
            assert_eq!(ForwardVariant::fastest(g, d), want, "G {g} D {d}");
        }
    }
}
