//! The MoE kernels on CUDA (bf16 through the tensor cores where the widths allow, f32 on CUDA
//! cores) against the per-token reference in f64 on the CPU: the routing tables, the routed
//! path's output and every gradient (x, router weights, both expert weights) through the fused
//! op (its products chosen automatically, the grouped kernels forced, one cuBLAS product per
//! expert forced) and its composed twin, and two runs giving the same bits. Built only with `--features cuda`; skipped without a device unless
//! `SIMPLEX_REQUIRE_CUDA=1`. Outputs are poisoned before every kernel.
#![cfg(feature = "cuda")]

mod common;
mod moe_common;

use candle_core::{DType, Device};
use common::cuda;
use moe_common::{cases, run, MoeData, Path, CUDA_PATHS};

#[test]
fn moe_kernels_match_the_reference() {
    let Some(dev) = cuda() else { return };
    for (dtype, rtol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        for (i, c) in cases(true).iter().enumerate() {
            let d = MoeData::new(c, 11 + i as u64).rounded(dtype);
            let want = run(c, &d, &Device::Cpu, DType::F64, Path::Reference).unwrap();
            let cpu = run(c, &d, &Device::Cpu, DType::F64, Path::Composed).unwrap();
            for path in CUDA_PATHS {
                let got = run(c, &d, &dev, dtype, path).unwrap();
                assert_eq!(got.ids, want.ids, "{}: top-k", c.name);
                assert_eq!(got.counts, cpu.counts, "{}: loads", c.name);
                assert_eq!(got.offsets, cpu.offsets, "{}: offsets", c.name);
                let name = format!("{} {dtype:?} {path:?}", c.name);
                got.assert_close_to(&want, &name, rtol);
                let again = run(c, &d, &dev, dtype, path).unwrap();
                assert_eq!(got.out, again.out, "{name}: two runs differ");
                assert_eq!(got.grads, again.grads, "{name}: two runs' gradients differ");
                println!("ok {name}");
            }
        }
    }
}
