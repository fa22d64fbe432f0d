//! The embedded demo: a tiny LLaVA-architecture checkpoint with random weights, three images and
//! six prompts, compiled into the binary so that `icet sweep` works anywhere with no download.
//! Its answers are gibberish by construction; it exercises the whole pipeline in seconds.
//!
//! It is unpacked once per content and user into the temporary folder, safely among other
//! processes and users: into a fresh private folder (mode 0700, files created new, so nothing
//! planted there is ever followed or written through), published under its final name by one
//! rename. A folder already under that name is used only if it is this user's, writable by no
//! one else, free of links and holds exactly the demo's bytes; otherwise this process keeps its
//! private copy. Files are never rewritten, so a process that has the weights mapped never sees
//! them change under it.
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

macro_rules! demo_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo/", $path)) as &[u8])),*]
    };
}

const FILES: &[(&str, &[u8])] = demo_files!(
    "model/config.json",
    "model/generation_config.json",
    "model/model.safetensors",
    "model/preprocessor_config.json",
    "model/special_tokens_map.json",
    "model/tokenizer.json",
    "model/tokenizer_config.json",
    "images/checker.png",
    "images/shapes.png",
    "images/sunset.png",
    "prompts.jsonl",
);

/// Where the demo lives once unpacked.
pub struct Demo {
    pub model: PathBuf,
    pub data: PathBuf,
}

impl Demo {
    fn at(root: PathBuf) -> Self {
        Self { model: root.join("model"), data: root.join("prompts.jsonl") }
    }
}

/// FNV-1a over the demo's names and bytes: the unpacked folder's name changes with its content.
fn digest() -> u64 {
    let mut h = crate::stats::FNV_OFFSET;
    for (name, bytes) in FILES {
        h = crate::stats::fnv1a(h, name.bytes().chain((bytes.len() as u64).to_le_bytes()).chain(bytes.iter().copied()));
    }
    h
}

/// The demo, unpacked (see the module documentation for how).
pub fn materialize() -> Result<Demo> {
    materialize_in(&std::env::temp_dir())
}

fn materialize_in(base: &Path) -> Result<Demo> {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    let name = format!("icet-demo-{}-{:016x}-{uid}", env!("CARGO_PKG_VERSION"), digest());
    let root = base.join(&name);
    if is_trusted(&root, uid) {
        return Ok(Demo::at(root));
    }
    let private = unpack_privately(base, &name)?;
    match std::fs::rename(&private, &root) {
        Ok(()) => Ok(Demo::at(root)),
        // Another process published it first, or something else holds the name.
        Err(_) if is_trusted(&root, uid) => {
            let _ = std::fs::remove_dir_all(&private);
            Ok(Demo::at(root))
        }
        Err(_) => {
            eprintln!(
                "icet: {} is not a demo folder of yours (planted, or changed); using a private copy in {}",
                root.display(),
                private.display()
            );
            Ok(Demo::at(private))
        }
    }
}

/// A fresh folder only this user can enter, holding the demo (files created new, synced).
fn unpack_privately(base: &Path, name: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = base.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    builder.create(&dir).with_context(|| format!("cannot unpack the demo into {}", dir.display()))?;
    for (rel, bytes) in FILES {
        let path = dir.join(rel);
        let written = (|| -> std::io::Result<()> {
            let parent = path.parent().expect("demo files live in folders");
            if !parent.is_dir() {
                builder.create(parent)?;
            }
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        written.with_context(|| format!("cannot unpack the demo into {}", path.display()))?;
    }
    Ok(dir)
}

/// `root` is a real folder of `uid`'s that nobody else can write, and every demo file in it is a
/// regular file (no link, not group- or world-writable) with exactly the demo's bytes.
fn is_trusted(root: &Path, uid: u32) -> bool {
    let safe = |p: &Path, dir: bool| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            let kind = if dir { m.file_type().is_dir() } else { m.file_type().is_file() };
            kind && m.uid() == uid && m.mode() & 0o022 == 0
        })
    };
    if !safe(root, true) || !safe(&root.join("model"), true) || !safe(&root.join("images"), true) {
        return false;
    }
    FILES.iter().all(|(rel, bytes)| {
        let path = root.join(rel);
        safe(&path, false) && {
            let mut have = Vec::with_capacity(bytes.len());
            File::open(&path).and_then(|mut f| f.read_to_end(&mut have)).is_ok() && have == *bytes
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-demo-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Issue 14, finding 6: the demo was unpacked into a fixed path of the temporary folder,
    /// following links planted there. Now a planted link or file is never written through.
    #[test]
    fn the_demo_never_follows_what_is_planted_under_its_name() {
        let base = scratch("planted");
        let first = materialize_in(&base).unwrap();
        let root = first.model.parent().unwrap().to_path_buf();
        assert!(is_trusted(&root, std::fs::metadata("/proc/self").unwrap().uid()));
        assert_eq!(materialize_in(&base).unwrap().model, first.model, "unpacked once, then reused");
        let victim = base.join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        // A link planted in place of a file.
        let weights = root.join("model/model.safetensors");
        std::fs::remove_file(&weights).unwrap();
        std::os::unix::fs::symlink(&victim, &weights).unwrap();
        let demo = materialize_in(&base).unwrap();
        assert_ne!(demo.model, first.model, "a private copy instead");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(demo.model.join("model.safetensors")).unwrap().file_type().is_file());
        // A link planted in place of the folder.
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::create_dir_all(base.join("elsewhere/model")).unwrap();
        std::os::unix::fs::symlink(base.join("elsewhere"), &root).unwrap();
        let demo = materialize_in(&base).unwrap();
        assert!(!demo.model.starts_with(&root));
        assert_eq!(std::fs::read_dir(base.join("elsewhere/model")).unwrap().count(), 0, "nothing written there");
    }
}
