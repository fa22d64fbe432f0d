//! Helpers of the `icet` binary's tests (`mod common; mod cli_common;` in each), on top of
//! `common`: running the binary and reading what it said.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// The `icet` binary built for this test; `ICET_BIN` runs the tests against another one (e.g. an
/// older build, to see a new test fail before its fix).
pub fn command() -> Command {
    match std::env::var_os("ICET_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_icet")),
    }
}

/// Runs `icet` with `args`.
pub fn icet(args: &[&str]) -> Output {
    command().args(args).output().expect("icet runs")
}

/// The stdout of a run that must succeed (else the test fails showing its stderr).
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "icet failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd`, which must succeed; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("icet runs");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `icet generate --model MODEL --device cpu --image IMAGE --prompt PROMPT` plus `extra`.
pub fn generate_on_cpu(model: &Path, image: &Path, prompt: &str, extra: &[&str]) -> Output {
    let mut args =
        vec!["generate", "--model", model.to_str().unwrap(), "--device", "cpu", "--image", image.to_str().unwrap()];
    args.extend_from_slice(&["--prompt", prompt]);
    args.extend_from_slice(extra);
    icet(&args)
}

/// Asserts a failed run printed exactly one line, `error: ...`, containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("icet: ")).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected `{needle}` in: {stderr}");
}
