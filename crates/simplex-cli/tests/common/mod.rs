//! Shared helpers of the CLI tests.
#![allow(dead_code)]

use std::process::Command;

/// Runs the `simplex` binary with `args`: (success, stdout, stderr).
pub fn simplex(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .output()
        .expect("run simplex");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
