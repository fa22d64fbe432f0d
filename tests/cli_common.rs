//! Helpers shared by the `icet` binary's tests (`mod cli_common;` in each).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// Runs the `icet` binary built for this test.
pub fn icet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_icet")).args(args).output().expect("icet runs")
}

/// `icet generate --model MODEL --device cpu --image IMAGE --prompt PROMPT` plus `extra`.
pub fn generate_on_cpu(model: &Path, image: &Path, prompt: &str, extra: &[&str]) -> Output {
    let mut args =
        vec!["generate", "--model", model.to_str().unwrap(), "--device", "cpu", "--image", image.to_str().unwrap()];
    args.extend_from_slice(&["--prompt", prompt]);
    args.extend_from_slice(extra);
    icet(&args)
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("icet-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An f32 tensor of a safetensors file: shape and values.
pub fn f32s(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st.tensor(name).unwrap_or_else(|_| panic!("tensor {name}"));
    (v.shape().to_vec(), v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `max |a - b| / max |b|`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64)).max(1e-12);
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, f64::max) / scale
}

/// Asserts a failed run printed exactly one line, `error: ...`, containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("icet: ")).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected `{needle}` in: {stderr}");
}
