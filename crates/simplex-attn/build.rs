//! Compiles `kernels/*.cu` to sm_90a cubins with nvcc, only when the `cuda` feature is on.
//!
//! A default build needs no CUDA at all. With `--features cuda`, nvcc is taken from `$NVCC`, else
//! `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH (`scripts/cuda-toolchain.sh` installs CUDA 13.0
//! and writes `.toolchain/env.sh` that sets them). Each `kernels/NAME.cu` becomes
//! `$OUT_DIR/NAME.cubin`, embedded by `src/cuda/module.rs`; ptxas' register/spill report
//! (`-Xptxas -v`) goes to `$OUT_DIR/NAME.ptxas.txt` and becomes cargo warnings only when it
//! reports spills. The PTX (`$OUT_DIR/NAME.ptx`) is checked for generic loads and stores (no
//! state space): in these kernels they mean a pointer into shared memory whose address space
//! the compiler lost (it then emits generic LD / ST instead of LDS / STS; such accesses cost the
//! wgmma kernels 2-11% until 2026-12-07), so they become a cargo warning too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The one target: Hopper with its architecture-specific instructions (wgmma, setmaxnreg).
const GENCODE: &str = "-gencode=arch=compute_90a,code=sm_90a";

/// Kernel files whose generic accesses are by construction: the multi-tensor optimizer reads
/// its tensors' addresses from a table in global memory.
const GENERIC_BY_DESIGN: &[&str] = &["fused_ops"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    // NVCC_APPEND_FLAGS / NVCC_PREPEND_FLAGS: nvcc reads them itself (a variant build's `-D`s)
    for var in [
        "NVCC",
        "CUDA_HOME",
        "NVCC_CCBIN",
        "NVCC_APPEND_FLAGS",
        "NVCC_PREPEND_FLAGS",
    ] {
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
    // nvcc's intermediate files, kept for the PTX (the cubin is the same with or without -keep)
    let keep = out.join(format!("{stem}.keep"));
    let _ = std::fs::create_dir_all(&keep);
    let mut cmd = Command::new(nvcc);
    cmd.args([
        "-cubin",
        GENCODE,
        "-O3",
        "-std=c++20",
        "-lineinfo",
        "-Xptxas",
        "-v",
    ])
    .arg("-Ikernels")
    .arg("-keep")
    .arg("-keep-dir")
    .arg(&keep)
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
    let ptx = out.join(format!("{stem}.ptx"));
    let _ = std::fs::remove_file(&ptx);
    let _ = std::fs::rename(keep.join(format!("{stem}.ptx")), &ptx);
    let _ = std::fs::remove_dir_all(&keep);
    check_ptx(&ptx, stem);
}

/// Warns when the kernel file's PTX has generic loads or stores.
fn check_ptx(ptx: &Path, stem: &str) {
    let Ok(text) = std::fs::read_to_string(ptx) else {
        println!(
            "cargo:warning={stem}: no PTX kept by nvcc, its loads and stores were not checked"
        );
        return;
    };
    let n = generic_accesses(&text);
    if n > 0 && !GENERIC_BY_DESIGN.contains(&stem) {
        println!(
            "cargo:warning={stem}: {n} generic loads/stores in the PTX ({}): a shared-memory \
             pointer made through an integer? (wgmma.cuh's aligned_dynamic_smem)",
            ptx.display()
        );
    }
}

/// PTX `ld` / `st` instructions without a state space (`.shared`, `.global`, `.param`,
/// `.local`, `.const`): generic accesses. Predicates (`@%p1`) are skipped; `ldmatrix`,
/// `stmatrix` and the like are not `ld.` / `st.`.
fn generic_accesses(ptx: &str) -> usize {
    const SPACES: [&str; 5] = [".shared", ".global", ".param", ".local", ".const"];
    ptx.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            if first.starts_with('@') {
                words.next()
            } else {
                Some(first)
            }
        })
        .filter(|op| op.starts_with("ld.") || op.starts_with("st."))
        .filter(|op| !SPACES.iter().any(|s| op.contains(s)))
        .count()
}

/// A ptxas line like `0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads` with a
/// non-zero spill count.
fn spills(line: &str) -> bool {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words
        .windows(3)
        .any(|w| w[1] == "bytes" && w[2] == "spill" && w[0].parse::<u64>().is_ok_and(|n| n > 0))
}
