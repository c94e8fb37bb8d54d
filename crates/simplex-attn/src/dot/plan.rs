//! The tile arithmetic the dot-product CUDA kernels share with their tests: the key range of a
//! block of queries, the queries of a block of keys, whether a tile needs a mask. Plain Rust,
//! so it is tested on machines without a GPU; the CUDA side mirrors it in `kernels/dot_attn.cuh`.
//! Which kernel runs a call is [`crate::kernels::dispatch::dot`].
//!
//! Shapes as in [`DotSpec`](super::DotSpec): `q [B,Nq,Hq,D]`, `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]`.

use std::ops::Range;

use candle_core::{DType, Device};

use super::spec::KeyRanges;
use crate::kernels::dispatch::dot::DotKernel;

/// True when [`super::dot_attn`] has a fused kernel for `dtype` inputs with head dims `d`, `dv`
/// on `device` (every CPU call; on CUDA, bf16 or f32 with head dims up to
/// [`crate::kernels::MAX_HEAD_DIM`] when built with the `cuda` feature). Callers use the slow twin
/// [`super::dot_attn_slow`] otherwise.
pub fn has_fused_kernel(device: &Device, dtype: DType, d: usize, dv: usize) -> bool {
    match device {
        Device::Cpu => matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16),
        Device::Cuda(_) => {
            cfg!(feature = "cuda") && DotKernel::choose(dtype, d, dv, false, false).is_ok()
        }
        _ => false,
    }
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
    fn cpu_always_has_a_fused_kernel_cuda_only_for_bf16_and_f32() {
        assert!(has_fused_kernel(&Device::Cpu, DType::F16, 7, 300));
        assert!(DotKernel::choose(DType::F64, 64, 64, true, true).is_err());
    }
}
