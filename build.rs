//! Kernel build for `crates/kernels` (its `build = "../../build.rs"`). Two products from the same
//! `kernels-cu/*.cu` sources (sharing the `.cuh` headers):
//!
//! 1. **GPU fatbins** — each file compiled by nvcc (the `NVCC` environment variable, else `nvcc` on
//!    PATH) into sm_80 and sm_90 machine code plus compute_80 PTX for newer GPUs to JIT.
//!    `OUT_DIR/kernel_modules.rs` lists them for `include_bytes!`. Without nvcc the build still
//!    succeeds with a cargo warning, the list is empty and the CUDA backend reports "built without
//!    CUDA kernels"; with nvcc, a kernel that fails to compile fails the build.
//!
//! 2. **The emulated device** — each file compiled *unchanged* by the host C++ compiler
//!    (`ICET_EMU_CXX`, else `CXX`, else `g++`) against `kernels-cu/emu/icet_emu.h`, linked with the
//!    emulator's runtime (`kernels-cu/emu/runtime.cpp`) into `libicet_emu.so`, which
//!    `OUT_DIR/emu_library.rs` embeds for `crates/kernels/src/device/emu.rs` to load. Every kernel
//!    is found by preprocessing its file once with marker macros (`__global__` →
//!    `__icet_emu_global__`): the name after the marker, its `__launch_bounds__`, and the name of
//!    the file's `extern __shared__` array; a generated wrapper then registers each kernel under
//!    its C name with a trampoline that reads its parameters from a cuLaunchKernel-style `void**`
//!    array. A construct the emulator does not implement is a compile error here, which fails the
//!    build. Without a C++ compiler (or with `ICET_EMU=0`) the build succeeds without the emulator.
//!    `ICET_EMU_SANITIZE=1` builds it with ASan + UBSan (scripts/emu-sanitize.sh), and
//!    `ICET_EMU_CXXFLAGS` adds flags; `ICET_KERNELS_DIR` compiles another copy of `kernels-cu/`
//!    (scripts/mutation-check.sh builds seeded bugs that way, in a target directory of its own).
//!
//! Speed on small machines: one compiler process per file, run in parallel, and a file is
//! recompiled only when its source, a header, the flags or the compiler changed (a content hash is
//! kept next to each output in OUT_DIR).
//!
//! No `--use_fast_math`: it turns `sinf`/`cosf` into `__sinf`/`__cosf`, which lose all accuracy at
//! the thousands of radians rotary embeddings reach, and `expf`/`erff` into approximations that
//! would break the 1e-5 agreement of the f32 path with the CPU reference. Kernels that can use a
//! fast intrinsic (`exp2f` in the softmax) call it explicitly.
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH_FLAGS: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_80,code=compute_80",
];
const FLAGS: &[&str] = &["-fatbin", "-O3", "-std=c++17", "-lineinfo"];

/// Host compiler flags of the emulated device. `-fno-strict-aliasing`: kernels reinterpret
/// storage arrays as `uint4` vectors, as CUDA allows; `-fno-extern-tls-init`: `extern __shared__`
/// arrays are block-scope `extern thread_local` declarations bound to a definition the wrapper adds;
/// `-ffp-contract=off`: the same results on every host CPU (nvcc's FMA contraction is not modelled).
const EMU_FLAGS: &[&str] = &[
    "-std=c++17",
    "-fPIC",
    "-fvisibility=hidden",
    "-fno-strict-aliasing",
    "-fno-extern-tls-init",
    "-ffp-contract=off",
    "-Wall",
    "-Wno-unknown-pragmas",
    "-pthread",
];
const EMU_OPT: &[&str] = &["-O2"];
const EMU_SANITIZE: &[&str] =
    &["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"];

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    find_on_path("nvcc")
}

fn env_flag(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let src_dir = env_flag("ICET_KERNELS_DIR").map_or_else(|| manifest.join("../../kernels-cu"), PathBuf::from);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=../../build.rs");
    for var in [
        "NVCC",
        "PATH",
        "ICET_KERNELS_DIR",
        "ICET_EMU",
        "ICET_EMU_CXX",
        "CXX",
        "ICET_EMU_SANITIZE",
        "ICET_EMU_CXXFLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={}", src_dir.display());

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in std::fs::read_dir(&src_dir).unwrap_or_else(|e| panic!("{}: {e}", src_dir.display())) {
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

    gpu_modules(&src_dir, &sources, &headers, &out_dir);
    emulator(&src_dir, &sources, &headers, &out_dir);
}

/// A content hash of `parts`, as 16 hex digits.
fn hash_of(parts: &[&[u8]]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn file_stamp(p: &Path) -> Vec<u8> {
    let mut v = p.display().to_string().into_bytes();
    if let Ok(t) = std::fs::metadata(p).and_then(|m| m.modified()) {
        v.extend(format!("{t:?}").into_bytes());
    }
    v
}

/// Runs `jobs` (each returning an error message on failure) on as many threads as there are cores.
fn run_parallel<J: Sync>(jobs: &[J], run: impl Fn(&J) -> Result<(), String> + Sync) -> Vec<String> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len().max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let run = &run;
                scope.spawn(move || {
                    jobs.iter().skip(w).step_by(workers).filter_map(|j| run(j).err()).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// The output of `cmd`, or a message with its stderr.
fn run_tool(mut cmd: Command, what: &str) -> Result<std::process::Output, String> {
    let output = cmd.output().map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

// ---- GPU fatbins (nvcc) --------------------------------------------------------------------------------

fn gpu_modules(src_dir: &Path, sources: &[PathBuf], headers: &[PathBuf], out_dir: &Path) {
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
    let mut common: Vec<Vec<u8>> =
        vec![FLAGS.join(" ").into_bytes(), ARCH_FLAGS.join(" ").into_bytes(), file_stamp(&nvcc)];
    for h in headers {
        common.push(std::fs::read(h).unwrap());
    }
    let common: Vec<&[u8]> = common.iter().map(|v| v.as_slice()).collect();

    let jobs: Vec<(PathBuf, PathBuf, String)> = sources
        .iter()
        .map(|src| {
            let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
            let body = std::fs::read(src).unwrap();
            let mut parts = common.clone();
            parts.push(&body);
            (src.clone(), out_dir.join(format!("{stem}.fatbin")), hash_of(&parts))
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
    let failures = run_parallel(&todo, |(src, fatbin, key)| {
        let mut cmd = Command::new(&nvcc);
        cmd.args(FLAGS).args(ARCH_FLAGS).arg("-I").arg(src_dir).arg("-o").arg(fatbin).arg(src);
        let output = run_tool(cmd, &format!("{}: nvcc", src.display()))?;
        // nvcc warnings are worth seeing: pass them on.
        for line in String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains("warning")) {
            println!("cargo:warning={}: {line}", src.file_name().unwrap().to_string_lossy());
        }
        std::fs::write(fatbin.with_extension("key"), key).unwrap();
        Ok(())
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

// ---- the emulated device (host C++ compiler) --------------------------------------------------------------

fn find_cxx() -> Option<PathBuf> {
    if let Some(c) = env_flag("ICET_EMU_CXX").or_else(|| env_flag("CXX")) {
        let p = PathBuf::from(&c);
        return if p.is_absolute() { Some(p) } else { find_on_path(&c) };
    }
    find_on_path("g++").or_else(|| find_on_path("c++"))
}

/// A kernel file's stem, its kernels and the name of its `extern __shared__` array.
type Scanned = (String, Vec<Found>, Option<String>);

/// One kernel of a file, as the marker pass found it.
struct Found {
    name: String,
    launch_bounds: Option<String>,
}

/// What the marker pass finds in a preprocessed kernel file: its kernels and the name of its
/// `extern __shared__` array (at most one name per file: every such array aliases the same
/// dynamic shared memory, which the emulator gives one name).
fn scan(text: &str, file: &str) -> Result<(Vec<Found>, Option<String>), String> {
    let mut kernels = Vec::new();
    let ident = |s: &str| -> usize { s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len()) };
    let mut rest = text;
    while let Some(at) = rest.find("__icet_emu_global__") {
        let before = rest[..at].trim_end();
        let mut s = rest[at + "__icet_emu_global__".len()..].trim_start();
        let context = || s.chars().take(80).collect::<String>();
        if !before.ends_with("extern \"C\"") {
            return Err(format!(
                "{file}: a __global__ function that is not extern \"C\" (the launchers look kernels up by their C name): {}",
                context()
            ));
        }
        s = s
            .strip_prefix("void")
            .ok_or_else(|| format!("{file}: a kernel must return void: {}", context()))?
            .trim_start();
        let mut launch_bounds = None;
        if let Some(r) = s.strip_prefix("__icet_emu_launch_bounds__") {
            let r = r.trim_start().strip_prefix('(').ok_or_else(|| format!("{file}: malformed __launch_bounds__"))?;
            let (mut depth, mut end, mut first_comma) = (1, None, None);
            for (i, c) in r.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    ',' if depth == 1 && first_comma.is_none() => first_comma = Some(i),
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| format!("{file}: unbalanced __launch_bounds__"))?;
            launch_bounds = Some(r[..first_comma.unwrap_or(end)].trim().to_string());
            s = r[end + 1..].trim_start();
        }
        let n = ident(s);
        if n == 0 || !s[n..].trim_start().starts_with('(') {
            return Err(format!("{file}: cannot read the kernel name in: {}", context()));
        }
        kernels.push(Found { name: s[..n].to_string(), launch_bounds });
        rest = &s[n..];
    }
    let mut shared = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("extern __icet_emu_shared__") {
        let decl = &rest[at..];
        let decl = &decl[..decl.find(';').unwrap_or(decl.len())];
        let bracket = decl.rfind('[').ok_or_else(|| format!("{file}: extern __shared__ without []: {decl}"))?;
        let head = decl[..bracket].trim_end();
        let start = head.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        shared.insert(head[start..].to_string());
        rest = &rest[at + 1..];
    }
    if shared.len() > 1 {
        return Err(format!(
            "{file}: extern __shared__ arrays of several names ({shared:?}); the emulator supports one name per file"
        ));
    }
    Ok((kernels, shared.into_iter().next()))
}

fn emulator(src_dir: &Path, sources: &[PathBuf], headers: &[PathBuf], out_dir: &Path) {
    let list = out_dir.join("emu_library.rs");
    let disabled = |why: &str| {
        std::fs::write(
            &list,
            format!("pub static LIBRARY: Option<&[u8]> = None;\npub const BUILD: &str = {:?};\n", why),
        )
        .unwrap();
    };
    if env_flag("ICET_EMU").as_deref() == Some("0") {
        return disabled("built without the CUDA emulator (ICET_EMU=0 at build time)");
    }
    let Some(cxx) = find_cxx() else {
        println!("cargo:warning=no C++ compiler (g++) found: building without the CUDA emulator (--device cuda-emu)");
        return disabled("built without the CUDA emulator (no C++ compiler at build time; apt-get install g++)");
    };
    let emu_dir = src_dir.join("emu");
    let work = out_dir.join("emu");
    std::fs::create_dir_all(&work).unwrap();
    let sanitize = env_flag("ICET_EMU_SANITIZE").is_some_and(|v| v != "0");
    let mut flags: Vec<String> = EMU_FLAGS.iter().map(|s| s.to_string()).collect();
    flags.extend((if sanitize { EMU_SANITIZE } else { EMU_OPT }).iter().map(|s| s.to_string()));
    if let Some(extra) = env_flag("ICET_EMU_CXXFLAGS") {
        flags.extend(extra.split_whitespace().map(String::from));
    }
    let includes = [format!("-I{}", emu_dir.display()), format!("-I{}", src_dir.display())];

    let mut emu_files: Vec<PathBuf> = std::fs::read_dir(&emu_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", emu_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("h" | "cpp")))
        .collect();
    emu_files.sort();
    for p in &emu_files {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let version = Command::new(&cxx)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| cxx.display().to_string());

    // Everything an object depends on besides its own source.
    let mut common: Vec<Vec<u8>> =
        vec![flags.join(" ").into_bytes(), file_stamp(&cxx), src_dir.display().to_string().into_bytes()];
    for h in headers.iter().chain(&emu_files) {
        common.push(std::fs::read(h).unwrap());
    }

    // The marker pass: which kernels each file defines.
    let scanned: std::sync::Mutex<Vec<Scanned>> = std::sync::Mutex::new(Vec::new());
    let jobs: Vec<&PathBuf> = sources.iter().collect();
    let errors = run_parallel(&jobs, |src| {
        let mut cmd = Command::new(&cxx);
        cmd.args(["-E", "-P", "-DICET_EMU_SCAN", "-std=c++17"]).args(&includes).arg("-x").arg("c++").arg(src);
        let out = run_tool(cmd, &format!("{}: preprocessing for the emulator", src.display()))?;
        let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
        let file = src.file_name().unwrap().to_str().unwrap().to_string();
        let (kernels, shared) = scan(&String::from_utf8_lossy(&out.stdout), &file)?;
        scanned.lock().unwrap().push((stem, kernels, shared));
        Ok(())
    });
    if !errors.is_empty() {
        panic!("the emulator's kernel scan failed:\n{}", errors.join("\n"));
    }
    let mut files = scanned.into_inner().unwrap();
    files.sort_by(|a, b| a.0.cmp(&b.0));

    // Wrappers: the unchanged .cu file, its dynamic shared memory, its kernel table.
    let mut units: Vec<(PathBuf, PathBuf)> = Vec::new(); // (source, object)
    let mut registry = String::from("// Generated by build.rs: every kernel file's table.\n#include \"icet_emu.h\"\n");
    for (stem, kernels, shared) in &files {
        let file = format!("{stem}.cu");
        let mut w =
            format!("// Generated by build.rs from kernels-cu/{file}.\n#include \"icet_emu.h\"\n#include \"{file}\"\n");
        w += &match shared {
            Some(name) => format!("ICET_EMU_DYNAMIC_SHARED({name})\n"),
            None => "ICET_EMU_NO_DYNAMIC_SHARED()\n".to_string(),
        };
        w += "namespace {\nconst icet_emu::Kernel icet_emu_kernels[] = {\n";
        for k in kernels {
            let bounds = k.launch_bounds.as_deref().map_or("1024".to_string(), |b| format!("({b})"));
            w += &format!("    ICET_EMU_KERNEL({}, {file:?}, {bounds})\n", k.name);
        }
        if kernels.is_empty() {
            w += "    {},\n";
        }
        w += "};\n}  // namespace\n";
        w += &format!(
            "extern \"C\" const icet_emu::Module icet_emu_module_{stem} = {{{file:?}, icet_emu_kernels, {}}};\n",
            kernels.len()
        );
        let path = work.join(format!("{stem}.cpp"));
        write_if_changed(&path, &w);
        units.push((path, work.join(format!("{stem}.o"))));
        registry += &format!("extern \"C\" const icet_emu::Module icet_emu_module_{stem};\n");
    }
    registry += "extern \"C\" const icet_emu::Module* const icet_emu_modules[] = {";
    for (stem, _, _) in &files {
        registry += &format!("&icet_emu_module_{stem}, ");
    }
    registry += "nullptr};\n";
    let reg = work.join("registry.cpp");
    write_if_changed(&reg, &registry);
    units.push((reg, work.join("registry.o")));
    units.push((emu_dir.join("runtime.cpp"), work.join("runtime.o")));

    let jobs: Vec<(PathBuf, PathBuf, String)> = units
        .into_iter()
        .map(|(src, obj)| {
            let mut parts: Vec<&[u8]> = common.iter().map(|v| v.as_slice()).collect();
            let body = std::fs::read(&src).unwrap();
            // A wrapper's real source is the kernel file it includes.
            let kernel_src = src
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|s| src_dir.join(format!("{s}.cu")))
                .filter(|p| p.exists() && src.starts_with(&work))
                .map(|p| std::fs::read(p).unwrap())
                .unwrap_or_default();
            parts.push(&body);
            parts.push(&kernel_src);
            let key = hash_of(&parts);
            (src, obj, key)
        })
        .collect();
    let started = std::time::Instant::now();
    let todo: Vec<&(PathBuf, PathBuf, String)> = jobs
        .iter()
        .filter(|(_, obj, key)| {
            std::fs::read_to_string(obj.with_extension("key")).ok().as_deref() != Some(key.as_str()) || !obj.exists()
        })
        .collect();
    let failures = run_parallel(&todo, |(src, obj, key)| {
        let mut cmd = Command::new(&cxx);
        cmd.args(&flags).args(&includes).arg("-c").arg("-o").arg(obj).arg(src);
        let output = run_tool(cmd, &format!("{}: {} (emulator)", src.display(), cxx.display()))?;
        for line in String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains("warning")) {
            println!("cargo:warning=emulator: {line}");
        }
        std::fs::write(obj.with_extension("key"), key).unwrap();
        Ok(())
    });
    if !failures.is_empty() {
        panic!("the CUDA kernels failed to compile for the emulated device:\n{}", failures.join("\n"));
    }
    let lib = work.join("libicet_emu.so");
    if !todo.is_empty() || !lib.exists() {
        let mut cmd = Command::new(&cxx);
        cmd.arg("-shared").args(&flags).arg("-o").arg(&lib).args(jobs.iter().map(|j| &j.1)).arg("-Wl,-Bsymbolic");
        if let Err(e) = run_tool(cmd, "linking the emulator") {
            panic!("{e}");
        }
        println!(
            "cargo:warning=compiled {} file(s) of the CUDA emulator with {} in {:.1}s{}",
            todo.len(),
            cxx.display(),
            started.elapsed().as_secs_f64(),
            if sanitize { " (ASan + UBSan)" } else { "" }
        );
    }
    let build = format!(
        "kernels-cu compiled by {version} ({}){}",
        if sanitize { EMU_SANITIZE.join(" ") } else { EMU_OPT.join(" ") },
        if sanitize { ", ASan + UBSan" } else { "" }
    );
    let rs = format!(
        "pub static LIBRARY: Option<&[u8]> = Some(include_bytes!({:?}));\npub const BUILD: &str = {build:?};\n",
        lib.display().to_string()
    );
    std::fs::write(&list, rs).unwrap();
}

/// Writes `text` unless the file already holds it (keeps its timestamp for tools that look).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}
