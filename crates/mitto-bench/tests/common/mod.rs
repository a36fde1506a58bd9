//! What the suite's tests share: the binaries the deployed layout runs, and the tiny config.

#![allow(dead_code)]

use mitto_bench::Config;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The `mitto` CLI of this build (`target/<profile>/mitto`, beside `mitto-bench`), built here
/// if it is not there yet (`cargo test -p mitto-bench` alone does not build it).
pub(crate) fn mitto_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let bench = PathBuf::from(env!("CARGO_BIN_EXE_mitto-bench"));
        let exe = bench.with_file_name(format!("mitto{}", std::env::consts::EXE_SUFFIX));
        if !exe.is_file() {
            let release = bench
                .parent()
                .is_some_and(|d| d.file_name().is_some_and(|n| n == "release"));
            let mut cmd = std::process::Command::new(env!("CARGO"));
            cmd.args(["build", "-p", "mitto-cli", "--bin", "mitto"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().unwrap_or_else(|e| panic!("cargo build: {e}"));
            assert!(status.success(), "cargo build -p mitto-cli failed");
        }
        exe
    })
    .clone()
}

/// `Config::tiny` with the binaries of this build.
pub(crate) fn tiny() -> Config {
    Config::tiny()
        .with_bench_exe(env!("CARGO_BIN_EXE_mitto-bench"))
        .with_mitto_exe(mitto_exe())
}
