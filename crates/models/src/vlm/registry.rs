//! The one list of model families, and the one place a model directory's family is detected
//! (from `config.json`'s `model_type`). Adding a family is one line in [`visit_families`].
use std::path::{Path, PathBuf};

use super::{Family, FamilyOptions, ModelInfo, ModelSpec, TemplateInfo};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Something done with each family in turn; [`visit_families`] calls [`Self::visit`] for every
/// family, in detection order.
trait FamilyVisitor {
    fn visit<F: Family>(&mut self);
}

/// Every family this engine knows.
fn visit_families(v: &mut impl FamilyVisitor) {
    v.visit::<crate::llava::family::LlavaFamily>();
    v.visit::<crate::mllama::family::MllamaFamily>();
    v.visit::<crate::llava_next::family::LlavaNextFamily>();
}

/// A family's static facts.
#[derive(Clone, Copy, Debug)]
pub struct FamilyFacts {
    pub name: &'static str,
    pub model_types: &'static [&'static str],
    pub templates: &'static [TemplateInfo],
    pub options: &'static [&'static str],
}

/// Every family's static facts, in detection order.
pub fn families() -> Vec<FamilyFacts> {
    struct Collect(Vec<FamilyFacts>);
    impl FamilyVisitor for Collect {
        fn visit<F: Family>(&mut self) {
            self.0.push(FamilyFacts {
                name: F::NAME,
                model_types: F::MODEL_TYPES,
                templates: F::TEMPLATES,
                options: F::OPTIONS,
            });
        }
    }
    let mut c = Collect(vec![]);
    visit_families(&mut c);
    c.0
}

/// Every family's named templates, each name once (in family order), for `--template`'s help.
pub fn templates() -> Vec<TemplateInfo> {
    let mut out: Vec<TemplateInfo> = Vec::new();
    for f in families() {
        for t in f.templates {
            if !out.iter().any(|o| o.name == t.name) {
                out.push(*t);
            }
        }
    }
    out
}

/// `config.json`'s `model_type` in `dir` (empty when the key is absent).
pub fn model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
    Ok(v["model_type"].as_str().unwrap_or_default().to_string())
}

/// The family of `dir`'s checkpoint, or an error naming `config.json` and the known families.
fn detect(dir: &Path) -> Result<FamilyFacts> {
    let model_type = model_type(dir)?;
    let all = families();
    all.iter().find(|f| f.model_types.contains(&model_type.as_str())).copied().ok_or_else(|| {
        let known: Vec<String> = all
            .iter()
            .map(|f| {
                format!(
                    "{} ({})",
                    f.name,
                    f.model_types.iter().filter(|t| !t.is_empty()).cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        Error::input(
            dir.join("config.json"),
            format!("model_type `{model_type}` is not a model family icet knows: {}", known.join("; ")),
        )
    })
}

/// Opens `dir` as its family, with the command line's family options; an option the family does
/// not take is an error naming the option and the family.
pub fn open<B: Backend>(dir: &Path, mut options: FamilyOptions) -> Result<Box<dyn ModelSpec<B>>> {
    struct Open<'a, B: Backend> {
        family: &'static str,
        dir: &'a Path,
        options: &'a mut FamilyOptions,
        out: Option<Result<Box<dyn ModelSpec<B>>>>,
        why_not: Option<(&'static str, Option<&'static str>)>,
    }
    impl<B: Backend> FamilyVisitor for Open<'_, B> {
        fn visit<F: Family>(&mut self) {
            if F::NAME != self.family || self.out.is_some() {
                return;
            }
            if let Some(flag) = self.options.remaining().find(|f| !F::OPTIONS.contains(f)) {
                self.why_not = Some((flag, F::why_not(flag)));
                return;
            }
            self.out = Some(F::open::<B>(self.dir, self.options));
        }
    }
    let family = detect(dir)?;
    let mut v = Open { family: family.name, dir, options: &mut options, out: None, why_not: None };
    visit_families(&mut v);
    if let Some((flag, why)) = v.why_not {
        let owners: Vec<&str> = families().iter().filter(|f| f.options.contains(&flag)).map(|f| f.name).collect();
        let why = why.unwrap_or("does not take it");
        return Err(match owners.as_slice() {
            [] => Error::invalid(format!("--{flag}: {} {why}", family.name)),
            _ => Error::invalid(format!("--{flag} is a {} option; {} {why}", owners.join("/"), family.name)),
        });
    }
    v.out.expect("the detected family is listed")
}

/// What `icet info` says about `dir`, by its family.
pub fn describe(dir: &Path) -> Result<ModelInfo> {
    struct Describe {
        family: &'static str,
        dir: PathBuf,
        out: Option<Result<ModelInfo>>,
    }
    impl FamilyVisitor for Describe {
        fn visit<F: Family>(&mut self) {
            if F::NAME == self.family && self.out.is_none() {
                self.out = Some(F::describe(&self.dir));
            }
        }
    }
    let family = detect(dir)?;
    let mut v = Describe { family: family.name, dir: dir.to_path_buf(), out: None };
    visit_families(&mut v);
    v.out.expect("the detected family is listed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_listed_once_with_distinct_model_types() {
        let all = families();
        assert!(all.len() >= 2);
        for (i, f) in all.iter().enumerate() {
            for g in &all[i + 1..] {
                assert_ne!(f.name, g.name);
                assert!(f.model_types.iter().all(|t| !g.model_types.contains(t)), "{} and {}", f.name, g.name);
            }
            assert!(!f.templates.is_empty(), "{} needs a default template", f.name);
        }
        let names: Vec<&str> = templates().iter().map(|t| t.name).collect();
        assert!(names.contains(&"llava-v1") && names.contains(&"llama3"), "{names:?}");
        assert!(names.contains(&"mistral-instruct"), "{names:?}");
        assert_eq!(names.iter().filter(|&&n| n == "llava-v1").count(), 1, "LLaVA and LLaVA-NeXT share llava-v1");
    }

    #[test]
    fn family_options_are_checked_against_the_family() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let mut opts = FamilyOptions::default();
        opts.set("strategy", "full");
        let e = open::<crate::backend::cpu::Cpu>(&fixtures.join("mllama-tiny"), opts).err().unwrap().to_string();
        assert_eq!(
            e,
            "--strategy is a LLaVA/LLaVA-NeXT option; Llama 3.2 Vision reads every vision token through cross-attention"
        );
        let mut opts = FamilyOptions::default();
        opts.set("exit-rule", "clamp");
        let e = open::<crate::backend::cpu::Cpu>(&fixtures.join("llava-tiny"), opts).err().unwrap().to_string();
        assert!(e.starts_with("--exit-rule is a Llama 3.2 Vision option; LLaVA "), "{e}");
        let spec = open::<crate::backend::cpu::Cpu>(&fixtures.join("llava-tiny"), FamilyOptions::default()).unwrap();
        assert_eq!((spec.num_layers(), spec.default_layer().unwrap()), (6, 5), "llava-tiny: 6 CLIP layers, -2 = 5");
        let spec =
            open::<crate::backend::cpu::Cpu>(&fixtures.join("llava-next-tiny-mistral"), FamilyOptions::default());
        assert_eq!(spec.unwrap().default_layer().unwrap(), 2, "llava_next detected; 4 CLIP layers, -3 = 2");
        let e = model_type(&fixtures.join("no-such-model")).unwrap_err().to_string();
        assert!(e.contains("no-such-model/config.json: cannot read"), "{e}");
    }
}
