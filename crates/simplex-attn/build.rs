//! Compiles `kernels/*.cu` to sm_90a cubins with nvcc, only when the `cuda` feature is on.
//!
//! A default build needs no CUDA at all. With `--features cuda`, nvcc is taken from `$NVCC`, else
//! `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH (`scripts/cuda-toolchain.sh` installs CUDA 13.0
//! and writes `.toolchain/env.sh` that sets them). Each `kernels/NAME.cu` becomes
//! `$OUT_DIR/NAME.cubin`, embedded by `src/cuda/module.rs`; ptxas' register/spill report
//! (`-Xptxas -v`) goes to `$OUT_DIR/NAME.ptxas.txt` and becomes cargo warnings only when it
//! reports spills.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The one target: Hopper with its architecture-specific instructions (wgmma, setmaxnreg).
const GENCODE: &str = "-gencode=arch=compute_90a,code=sm_90a";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ beside build.rs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
        .collect();
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
    }
    for src in sources
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
    {
        compile(&nvcc, src, &out);
    }
}

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("nvcc")
}

fn compile(nvcc: &Path, src: &Path, out: &Path) {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 kernel file name");
    let cubin = out.join(format!("{stem}.cubin"));
    let mut cmd = Command::new(nvcc);
    cmd.args([
        "-cubin",
        GENCODE,
        "-O3",
        "-std=c++17",
        "-lineinfo",
        "-Xptxas",
        "-v",
    ])
    .arg("-Ikernels")
    .arg("-o")
    .arg(&cubin)
    .arg(src);
    if let Some(ccbin) = std::env::var_os("NVCC_CCBIN") {
        cmd.arg("-ccbin").arg(ccbin);
    }
    let res = cmd.output().unwrap_or_else(|e| {
        panic!(
            "could not run {} ({e}): the `cuda` feature needs nvcc 13.0; run \
             scripts/cuda-toolchain.sh and `source .toolchain/env.sh`",
            nvcc.display()
        )
    });
    let report = String::from_utf8_lossy(&res.stderr).into_owned();
    let _ = std::fs::write(out.join(format!("{stem}.ptxas.txt")), &report);
    if !res.status.success() {
        panic!(
            "nvcc failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&res.stdout),
            report
        );
    }
    for line in report.lines().filter(|l| spills(l)) {
        println!("cargo:warning={stem}: {}", line.trim());
    }
}

/// A ptxas line like `0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads` with a
/// non-zero spill count.
fn spills(line: &str) -> bool {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words
        .windows(3)
        .any(|w| w[1] == "bytes" && w[2] == "spill" && w[0].parse::<u64>().is_ok_and(|n| n > 0))
}
