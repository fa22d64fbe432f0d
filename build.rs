//! Kernel build for `crates/kernels` (its `build = "../../build.rs"`): compiles every
//! `kernels-cu/*.cu` (sharing the `.cuh` headers) with nvcc — the `NVCC` environment variable,
//! else `nvcc` on PATH — into one fatbin per source file: sm_80 and sm_90 machine code plus
//! compute_80 PTX for newer GPUs to JIT. `OUT_DIR/kernel_modules.rs` lists them for
//! `include_bytes!`.
//!
//! Without nvcc the build still succeeds: it prints a cargo warning, the module list is empty and
//! the CUDA backend reports "built without CUDA kernels". With nvcc, a kernel that fails to
//! compile fails the build.
//!
//! Speed on small machines: one nvcc process per file, run in parallel, and a file is recompiled
//! only when its source, a header, the flags or the nvcc binary changed (a content hash is kept
//! next to each fatbin in OUT_DIR).
//!
//! No `--use_fast_math`: it turns `sinf`/`cosf` into `__sinf`/`__cosf`, which lose all accuracy at
//! the thousands of radians rotary embeddings reach, and `expf`/`erff` into approximations that
//! would break the 1e-5 agreement of the f32 path with the CPU reference. Kernels that can use a
//! fast intrinsic (`exp2f` in the softmax) call it explicitly.
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH_FLAGS: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_80,code=compute_80",
];
const FLAGS: &[&str] = &["-fatbin", "-O3", "-std=c++17", "-lineinfo"];

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nvcc")).find(|p| p.is_file()))
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let src_dir = manifest.join("../../kernels-cu");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=../../build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed={}", src_dir.display());

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in std::fs::read_dir(&src_dir).expect("kernels-cu/ is missing") {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") => headers.push(path),
            _ => continue,
        }
    }
    sources.sort();
    headers.sort();
    for p in sources.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let list = out_dir.join("kernel_modules.rs");
    let Some(nvcc) = find_nvcc() else {
        println!(
            "cargo:warning=nvcc not found (set NVCC or put nvcc on PATH; scripts/install-nvcc.sh installs one): \
             building without CUDA kernels"
        );
        std::fs::write(&list, "pub static MODULES: &[(&str, &[u8])] = &[];\npub const NVCC: Option<&str> = None;\n")
            .unwrap();
        return;
    };

    // Everything a fatbin depends on besides its own source.
    let mut common = DefaultHasher::new();
    FLAGS.hash(&mut common);
    ARCH_FLAGS.hash(&mut common);
    nvcc.hash(&mut common);
    std::fs::metadata(&nvcc).ok().and_then(|m| m.modified().ok()).hash(&mut common);
    for h in &headers {
        std::fs::read(h).unwrap().hash(&mut common);
    }
    let common = common.finish();

    let jobs: Vec<(PathBuf, PathBuf, String)> = sources
        .iter()
        .map(|src| {
            let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
            let mut h = DefaultHasher::new();
            common.hash(&mut h);
            std::fs::read(src).unwrap().hash(&mut h);
            (src.clone(), out_dir.join(format!("{stem}.fatbin")), format!("{:016x}", h.finish()))
        })
        .collect();

    let started = std::time::Instant::now();
    let todo: Vec<&(PathBuf, PathBuf, String)> = jobs
        .iter()
        .filter(|(_, fatbin, key)| {
            std::fs::read_to_string(fatbin.with_extension("key")).ok().as_deref() != Some(key.as_str())
                || !fatbin.exists()
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(todo.len().max(1));
    let failures: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<Vec<&(PathBuf, PathBuf, String)>> =
            (0..workers).map(|w| todo.iter().skip(w).step_by(workers).copied().collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let nvcc = &nvcc;
                let src_dir = &src_dir;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for (src, fatbin, key) in chunk {
                        if let Err(e) = compile(nvcc, src_dir, src, fatbin) {
                            failures.push(e);
                        } else {
                            std::fs::write(fatbin.with_extension("key"), key).unwrap();
                        }
                    }
                    failures
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    if !failures.is_empty() {
        panic!("CUDA kernels failed to compile:\n{}", failures.join("\n"));
    }
    if !todo.is_empty() {
        println!(
            "cargo:warning=compiled {} CUDA kernel file(s) with {} in {:.1}s",
            todo.len(),
            nvcc.display(),
            started.elapsed().as_secs_f64()
        );
    }

    let mut rs = String::from("pub static MODULES: &[(&str, &[u8])] = &[\n");
    for (src, fatbin, _) in &jobs {
        let stem = src.file_stem().unwrap().to_str().unwrap();
        rs += &format!("    ({stem:?}, include_bytes!({:?})),\n", fatbin.display().to_string());
    }
    rs += "];\n";
    rs += &format!("pub const NVCC: Option<&str> = Some({:?});\n", nvcc.display().to_string());
    std::fs::write(&list, rs).unwrap();
}

fn compile(nvcc: &Path, include: &Path, src: &Path, fatbin: &Path) -> Result<(), String> {
    let output = Command::new(nvcc)
        .args(FLAGS)
        .args(ARCH_FLAGS)
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(fatbin)
        .arg(src)
        .output()
        .map_err(|e| format!("{}: cannot run {}: {e}", src.display(), nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{}: nvcc failed ({}):\n{}{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // nvcc warnings are worth seeing: pass them on.
    for line in String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains("warning")) {
        println!("cargo:warning={}: {line}", src.file_name().unwrap().to_string_lossy());
    }
    Ok(())
}
