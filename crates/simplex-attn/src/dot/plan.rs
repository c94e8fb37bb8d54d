//! Which CUDA kernel runs a dot-product attention call, and the tile arithmetic the kernels share
//! with the launch code. Plain Rust, so it is tested on machines without a GPU; the CUDA side
//! mirrors it in `kernels/dot_attn.cuh` (key ranges of a block) and in the tile constants of each
//! `kernels/dot_attn_*.cu`.
//!
//! Shapes as in [`super::spec`]: `q [B,Nq,Hq,D]`, `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]`.

use std::ops::Range;

use candle_core::{DType, Device};

use super::spec::KeyRanges;
use crate::AttnError;

/// The largest head dim (D or Dv) the CUDA kernels take.
pub const CUDA_MAX_HEAD_DIM: usize = 256;

/// The CUDA kernels that run one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotKernel {
    /// Hopper tensor cores (wgmma, a producer warpgroup and two consumers):
    /// `kernels/dot_attn_bwd_wgmma.cu` for the backward and `kernels/dot_attn_fwd_wgmma.cu` for
    /// the forward at D = 128; the forward at D = 64 is the mma.sync one
    /// ([`DotKernel::forward`]). bf16, `D = Dv = d` in {64, 128}, 16-byte aligned inputs, any
    /// GQA ratio, window, causality and `Nk >= Nq`.
    Wgmma {
        /// D = Dv.
        d: usize,
    },
    /// Tensor cores (mma.sync, FlashAttention-2 style): `kernels/dot_attn_fwd.cu`,
    /// `dot_attn_bwd_dq.cu`, `dot_attn_bwd_dkv.cu`; the same calls as [`DotKernel::Wgmma`].
    TensorCore {
        /// D = Dv.
        d: usize,
    },
    /// CUDA cores: `kernels/dot_attn_simple.cu`, bf16 or f32, compiled for `D, Dv <= width`.
    Simple {
        /// 32, 64, 128 or 256.
        width: usize,
    },
}

/// Which tensor-core kernels run the calls they cover (bf16, D = Dv in {64, 128}, aligned
/// inputs): [`DotKernel::Wgmma`] (the default: the fastest as measured, kernels/NOTES.md) or
/// the earlier mma.sync ones throughout, for side-by-side measurements and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DotTensorCores {
    /// [`DotKernel::Wgmma`].
    #[default]
    Wgmma,
    /// [`DotKernel::TensorCore`].
    MmaSync,
}

impl DotKernel {
    /// Picks the kernels for inputs of `dtype` with head dims `d` (q, k) and `dv` (v).
    /// `aligned`: every input view starts at a multiple of 16 bytes (cp.async needs it);
    /// `tensor_cores`: the tensor-core kernels are allowed; `family`: which of them.
    /// Errors name what no kernel takes.
    pub fn choose(
        dtype: DType,
        d: usize,
        dv: usize,
        aligned: bool,
        tensor_cores: bool,
        family: DotTensorCores,
    ) -> Result<DotKernel, AttnError> {
        if !matches!(dtype, DType::BF16 | DType::F32) {
            return Err(AttnError::Input(format!(
                "dot attention on CUDA: inputs are {dtype:?}, but the CUDA kernels take bf16 or \
                 f32 (convert with .to_dtype(DType::BF16) or DType::F32)"
            )));
        }
        for (name, x) in [("D", d), ("Dv", dv)] {
            if x == 0 || x > CUDA_MAX_HEAD_DIM {
                return Err(AttnError::Shape(format!(
                    "dot attention on CUDA: {name} = {x}, but the CUDA kernels take head dims \
                     1..={CUDA_MAX_HEAD_DIM}"
                )));
            }
        }
        if tensor_cores && aligned && dtype == DType::BF16 && d == dv && matches!(d, 64 | 128) {
            return Ok(match family {
                DotTensorCores::Wgmma => DotKernel::Wgmma { d },
                DotTensorCores::MmaSync => DotKernel::TensorCore { d },
            });
        }
        let width = d.max(dv).next_power_of_two().max(32);
        Ok(DotKernel::Simple { width })
    }

    /// The kernels that run the forward of a call for which `self` was chosen: the wgmma
    /// family's forward at D = 64 is the mma.sync kernel (`dot_attn_fwd.cu`: 2 CTAs of 4 warps
    /// per SM; at the LM layer B=32 N=1024 H=8 D=64 its kernel ran 173 us against 182 us for
    /// the wgmma forward, H100, kernels/NOTES.md), the rest is `self`. The backward always runs
    /// `self` (both forwards leave the same o and lse).
    pub fn forward(self) -> DotKernel {
        match self {
            DotKernel::Wgmma { d: 64 } => DotKernel::TensorCore { d: 64 },
            k => k,
        }
    }
}

/// True when [`super::dot_attn`] has a fused kernel for `dtype` inputs with head dims `d`, `dv`
/// on `device` (every CPU call; on CUDA, bf16 or f32 with head dims up to
/// [`CUDA_MAX_HEAD_DIM`] when built with the `cuda` feature). Callers use the slow twin
/// [`super::dot_attn_slow`] otherwise.
pub fn has_fused_kernel(device: &Device, dtype: DType, d: usize, dv: usize) -> bool {
    match device {
        Device::Cpu => matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16),
        Device::Cuda(_) => {
            cfg!(feature = "cuda")
                && DotKernel::choose(dtype, d, dv, false, false, DotTensorCores::Wgmma).is_ok()
        }
        _ => false,
    }
}

/// Queries per CTA of the tensor-core forward (`BM` in dot_attn_fwd.cu).
pub const FWD_QUERIES: usize = 128;
/// Threads per CTA of the tensor-core forward (4 warps).
pub const FWD_THREADS: u32 = 128;

/// Keys per tile of the tensor-core forward (`BN` of `DOT_FWD` in dot_attn_fwd.cu).
pub fn fwd_keys(d: usize) -> usize {
    if d <= 64 {
        64
    } else {
        32
    }
}

/// Queries per CTA and keys per tile of the tensor-core dq kernel (`BM`, `BN` in
/// dot_attn_bwd_dq.cu).
pub const DQ_QUERIES: usize = 128;
/// See [`DQ_QUERIES`].
pub const DQ_KEYS: usize = 64;

/// Threads per CTA of the tensor-core dq and dk/dv kernels (8 warps of 16 rows).
pub const BWD_THREADS: u32 = 256;

/// Keys per CTA of the tensor-core dk/dv kernel (`BN` in dot_attn_bwd_dkv.cu).
pub const DKV_KEYS: usize = 128;

/// Queries per tile of the tensor-core dk/dv kernel (`BQ` of `DOT_DKV` in dot_attn_bwd_dkv.cu).
pub fn dkv_queries(d: usize) -> usize {
    if d <= 64 {
        64
    } else {
        32
    }
}

/// Threads per CTA of the wgmma kernels (a producer warpgroup and two consumers;
/// `THREADS` in dot_attn_wgmma.cuh).
pub const WGMMA_THREADS: u32 = 384;
/// Rows (query, head) per CTA of the wgmma forward and dq kernels, keys per CTA of the wgmma
/// dk/dv kernel (`CTA_ROWS` in dot_attn_wgmma.cuh).
pub const WGMMA_ROWS: usize = 128;
/// Stages of the wgmma kernels' producer ring (`NS` in dot_attn_wgmma.cuh).
const WGMMA_STAGES: usize = 3;
/// Keys per tile of the wgmma forward (`TK` in dot_attn_fwd_wgmma.cu), of the wgmma dq kernel
/// (`TKQ`), and rows per step of the wgmma dk/dv kernel (`TQ` in dot_attn_bwd_wgmma.cu).
const WGMMA_FWD_KEYS: usize = 128;
const WGMMA_DQ_KEYS: usize = 64;
const WGMMA_DKV_ROWS: usize = 64;

/// Dynamic shared memory of the wgmma forward: the ring of K, V tiles (bf16, unpadded), and
/// 1024 bytes to align the base for the 128-byte swizzle (`FwdSmem` in dot_attn_fwd_wgmma.cu).
pub fn wgmma_fwd_smem(d: usize) -> usize {
    WGMMA_STAGES * 2 * WGMMA_FWD_KEYS * d * 2 + 1024
}

/// Dynamic shared memory of the wgmma dq kernel (`DqSmem` in dot_attn_bwd_wgmma.cu).
pub fn wgmma_dq_smem(d: usize) -> usize {
    WGMMA_STAGES * 2 * WGMMA_DQ_KEYS * d * 2 + 1024
}

/// Dynamic shared memory of the wgmma dk/dv kernel (`DkvSmem` in dot_attn_bwd_wgmma.cu): the
/// consumers' K, V rows at D = 128 (registers at D = 64), the ring of q, dout rows and of lse,
/// delta, and the alignment slack.
pub fn wgmma_dkv_smem(d: usize) -> usize {
    let tile = 64 * d * 2;
    let own = if d > 64 { 4 * tile } else { 0 };
    own + WGMMA_STAGES * (2 * tile + 2 * WGMMA_DKV_ROWS * 4) + 1024
}

/// Work items of the wgmma forward and dq kernels: blocks of [`WGMMA_ROWS`] of the `Nq * G` rows
/// (query, head) of each (batch, K/V head).
pub fn wgmma_row_items(seq_q: usize, heads_q: usize, heads_kv: usize, batch: usize) -> usize {
    (seq_q * (heads_q / heads_kv)).div_ceil(WGMMA_ROWS) * heads_kv * batch
}

/// Work items of the wgmma dk/dv kernel: blocks of [`WGMMA_ROWS`] keys of each (batch, K/V head).
pub fn wgmma_key_items(seq_k: usize, heads_kv: usize, batch: usize) -> usize {
    seq_k.div_ceil(WGMMA_ROWS) * heads_kv * batch
}

/// The grid (x) of a wgmma kernel over `items` work items on a device with `sms`
/// multiprocessors: persistent, one CTA per multiprocessor (their shared memory and 384
/// threads x 168 registers allow one), each taking items in the kernel's snake order
/// (`Work` in dot_attn_wgmma.cuh); fewer CTAs when there are fewer items.
pub fn wgmma_grid(items: usize, sms: usize) -> usize {
    items.min(sms.max(1))
}

/// Rows (one warp each) per block of the CUDA-core kernels and the delta pre-pass
/// (`WARPS` in dot_attn_simple.cu).
pub const SIMPLE_ROWS: usize = 4;
/// Threads per block of the CUDA-core kernels.
pub const SIMPLE_THREADS: u32 = 32 * SIMPLE_ROWS as u32;

/// Dynamic shared memory of a CUDA-core kernel whose warps each stage `rows` f32 rows of
/// `width` values (forward: q; dq: q, dout; dk/dv: k, v).
pub fn simple_smem(rows: usize, width: usize) -> usize {
    SIMPLE_ROWS * rows * width * 4
}

/// Bytes of one bf16 tile row in shared memory: `d` values and 16 bytes of padding.
fn row_bytes(d: usize) -> usize {
    2 * (d + 8)
}

/// Dynamic shared memory of the tensor-core forward: Q, and K, V double-buffered.
pub fn fwd_smem(d: usize) -> usize {
    (FWD_QUERIES + 4 * fwd_keys(d)) * row_bytes(d)
}

/// Dynamic shared memory of the tensor-core dq kernel: Q, dO, and K, V double-buffered.
pub fn dq_smem(d: usize) -> usize {
    (2 * DQ_QUERIES + 4 * DQ_KEYS) * row_bytes(d)
}

/// Dynamic shared memory of the tensor-core dk/dv kernel: K, V, and Q, dO, lse, delta
/// double-buffered.
pub fn dkv_smem(d: usize) -> usize {
    let bq = dkv_queries(d);
    (2 * DKV_KEYS + 4 * bq) * row_bytes(d) + 4 * 4 * bq
}

/// The keys seen by at least one of the queries `queries` (non-empty, inside `0..Nq`): both ends
/// of [`KeyRanges::range`] grow with the query, so it is the first query's start to the last
/// one's end (`keys_of_block` in dot_attn.cuh).
pub fn block_keys(keys: &KeyRanges, queries: Range<usize>) -> Range<usize> {
    keys.range(queries.start).start..keys.range(queries.end - 1).end
}

/// The queries that see at least one of the keys `ks` (non-empty, inside `0..Nk`), in closed
/// form (`queries_of_block` in dot_attn.cuh); empty when none does.
pub fn block_queries(keys: &KeyRanges, ks: Range<usize>) -> Range<usize> {
    let off = (keys.seq_k - keys.seq_q) as i64;
    let w = keys.w as i64;
    let lo = if keys.causal {
        ks.start as i64 - off
    } else {
        ks.start as i64 - (w - 1) - off
    };
    let hi = ks.end as i64 + (w - 1) - off;
    let clamp = |x: i64| x.clamp(0, keys.seq_q as i64) as usize;
    let (lo, hi) = (clamp(lo), clamp(hi));
    lo..hi.max(lo)
}

/// True when every query of `queries` sees every key of `ks`, so the tile needs no mask
/// (`tile_is_full` in dot_attn.cuh). `ks` may reach past Nk (a partial last tile): never full.
pub fn tile_is_full(keys: &KeyRanges, queries: Range<usize>, ks: Range<usize>) -> bool {
    keys.range(queries.end - 1).start <= ks.start && keys.range(queries.start).end >= ks.end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DotSpec;

    fn ranges(spec: DotSpec, nq: usize, nk: usize) -> KeyRanges {
        let dims = spec
            .dims(&[1, nq, 1, 8], &[1, nk, 1, 8], &[1, nk, 1, 8])
            .expect("valid");
        spec.keys(&dims)
    }

    fn specs() -> Vec<DotSpec> {
        let bi = DotSpec::bidirectional;
        vec![
            DotSpec::causal(),
            DotSpec::sliding(1),
            DotSpec::sliding(3),
            DotSpec::sliding(40),
            bi(),
            bi().with_window(Some(1)),
            bi().with_window(Some(4)),
            bi().with_window(Some(100)),
        ]
    }

    #[test]
    fn block_keys_and_queries_match_the_spec_ranges() {
        for spec in specs() {
            for (nq, nk) in [(1, 1), (9, 9), (1, 30), (7, 23), (23, 23)] {
                let r = ranges(spec, nq, nk);
                for i0 in 0..nq {
                    for i1 in i0 + 1..=nq {
                        let lo = (i0..i1).map(|i| r.range(i).start).min().expect("non-empty");
                        let hi = (i0..i1).map(|i| r.range(i).end).max().expect("non-empty");
                        assert_eq!(
                            block_keys(&r, i0..i1),
                            lo..hi,
                            "{spec:?} {nq} {nk} {i0}..{i1}"
                        );
                    }
                }
                for j0 in 0..nk {
                    for j1 in j0 + 1..=nk {
                        let want = r.queries_seeing(j0..j1);
                        let got = block_queries(&r, j0..j1);
                        if want.is_empty() {
                            assert!(got.is_empty(), "{spec:?} {nq} {nk} {j0}..{j1}: {got:?}");
                        } else {
                            assert_eq!(got, want, "{spec:?} {nq} {nk} {j0}..{j1}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn full_tiles_are_exactly_those_without_masked_pairs() {
        for spec in specs() {
            let (nq, nk) = (13, 29);
            let r = ranges(spec, nq, nk);
            for (i0, i1) in [(0, 4), (4, 8), (9, 13), (0, 13), (12, 13)] {
                for j0 in 0..nk {
                    for j1 in [j0 + 1, j0 + 4, nk, nk + 5] {
                        if j1 <= j0 {
                            continue;
                        }
                        let want = (i0..i1).all(|i| {
                            let k = r.range(i);
                            k.start <= j0 && j1 <= k.end
                        });
                        assert_eq!(
                            tile_is_full(&r, i0..i1, j0..j1),
                            want,
                            "{spec:?} {i0}..{i1} {j0}..{j1}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_choice_tensor_cores_only_where_they_apply() {
        let (wg, mma) = (DotTensorCores::Wgmma, DotTensorCores::MmaSync);
        let bf = DType::BF16;
        for d in [64, 128] {
            assert_eq!(
                DotKernel::choose(bf, d, d, true, true, wg).ok(),
                Some(DotKernel::Wgmma { d })
            );
            assert_eq!(
                DotKernel::choose(bf, d, d, true, true, mma).ok(),
                Some(DotKernel::TensorCore { d })
            );
        }
        assert_eq!(DotTensorCores::default(), wg);
        // the forward: mma.sync at D = 64 in both families, wgmma at D = 128 in the default one
        assert_eq!(
            DotKernel::Wgmma { d: 64 }.forward(),
            DotKernel::TensorCore { d: 64 }
        );
        assert_eq!(
            DotKernel::Wgmma { d: 128 }.forward(),
            DotKernel::Wgmma { d: 128 }
        );
        for k in [
            DotKernel::TensorCore { d: 64 },
            DotKernel::TensorCore { d: 128 },
            DotKernel::Simple { width: 64 },
        ] {
            assert_eq!(k.forward(), k);
        }
        // not aligned, switched off, f32, D != Dv, other D: the CUDA-core kernels, whichever
        // tensor-core family is asked for
        for (dt, d, dv, aligned, on, width) in [
            (bf, 64, 64, false, true, 64),
            (bf, 128, 128, true, false, 128),
            (DType::F32, 64, 64, true, true, 64),
            (bf, 64, 32, true, true, 64),
            (bf, 96, 96, true, true, 128),
            (bf, 1, 3, true, true, 32),
            (bf, 33, 8, true, true, 64),
            (bf, 256, 200, true, true, 256),
        ] {
            for family in [wg, mma] {
                assert_eq!(
                    DotKernel::choose(dt, d, dv, aligned, on, family).ok(),
                    Some(DotKernel::Simple { width }),
                    "{dt:?} {d} {dv} {aligned} {on} {family:?}"
                );
            }
        }
        let e = DotKernel::choose(DType::F16, 64, 64, true, true, wg).unwrap_err();
        assert!(e.to_string().contains("F16"), "{e}");
        let e = DotKernel::choose(bf, 64, 320, true, true, wg).unwrap_err();
        assert!(e.to_string().contains("Dv = 320"), "{e}");
    }

    #[test]
    fn shared_memory_fits_the_ctas_per_sm_the_kernels_assume() {
        // an H100/H200 SM has 228 KiB (227 KiB for one block): the mma.sync forward is written
        // for two CTAs per SM, the other kernels for one
        for d in [64, 128] {
            assert!(fwd_smem(d) <= 113 * 1024, "d {d}: {}", fwd_smem(d));
            for smem in [
                dq_smem(d),
                dkv_smem(d),
                wgmma_fwd_smem(d),
                wgmma_dq_smem(d),
                wgmma_dkv_smem(d),
            ] {
                assert!(smem <= 227 * 1024, "d {d}: {smem} bytes");
            }
        }
        assert_eq!(fwd_smem(64), (128 + 256) * 144);
        assert_eq!(dkv_smem(128), (256 + 128) * 272 + 16 * 32);
        assert_eq!(simple_smem(2, 256), 8192);
        // the wgmma kernels: 3 stages of (K, V) tiles of 128 (forward) or 64 (dq) keys; dk/dv:
        // own K, V at D = 128, 3 stages of (q, dout) 64-row tiles and their lse, delta
        assert_eq!(wgmma_fwd_smem(128), 3 * 2 * 128 * 256 + 1024);
        assert_eq!(wgmma_dq_smem(64), 3 * 2 * 64 * 128 + 1024);
        assert_eq!(wgmma_dkv_smem(64), 3 * (16384 + 512) + 1024);
        assert_eq!(wgmma_dkv_smem(128), 4 * 16384 + 3 * (32768 + 512) + 1024);
    }

    #[test]
    fn wgmma_items_cover_every_row_and_key() {
        // rows (query, head) of a K/V head: Nq * G, in blocks of 128
        assert_eq!(wgmma_row_items(1024, 8, 8, 32), 8 * 8 * 32);
        assert_eq!(wgmma_row_items(4096, 32, 8, 4), 128 * 8 * 4);
        assert_eq!(wgmma_row_items(1, 8, 1, 1), 1);
        assert_eq!(wgmma_row_items(77, 3, 1, 2), 2 * 2);
        assert_eq!(wgmma_key_items(300, 2, 1), 3 * 2);
        assert_eq!(wgmma_key_items(128, 1, 1), 1);
        // persistent: one CTA per multiprocessor, fewer when there are fewer items
        assert_eq!(wgmma_grid(2048, 132), 132);
        assert_eq!(wgmma_grid(5, 132), 5);
        assert_eq!(wgmma_grid(5, 0), 1);
    }

    #[test]
    fn cpu_always_has_a_fused_kernel_cuda_only_for_bf16_and_f32() {
        assert!(has_fused_kernel(&Device::Cpu, DType::F16, 7, 300));
        assert!(DotKernel::choose(DType::F64, 64, 64, true, true, DotTensorCores::Wgmma).is_err());
    }
}
