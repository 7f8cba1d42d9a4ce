//! What every command that reads `.circuit` files takes to change their settings from the
//! command line: `--model` and `--set KEY=VALUE`; and the one way a command-line model name
//! becomes a model (built-in, folder, or hub name in the local HuggingFace cache).

use std::path::Path;

use circuit::model::ModelSource;
use circuit::resolve::overrides::{Override, SettingOverride};
use circuit::resolve::ResolveOptions;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct SettingArgs {
    /// Use this model instead of each file's `model` setting: a built-in model's name, a
    /// HuggingFace model folder, or a hub name (`gpt2`, `EleutherAI/pythia-70m`) found offline
    /// in the local HuggingFace cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long, value_name = "NAME-OR-DIR")]
    pub model: Option<String>,
    /// Override a setting without editing the file (repeatable; reports record it):
    /// dataset.PARAM=VALUE (a built-in generator's parameter, e.g. dataset.n=256),
    /// metric=logit_diff|prob|logprob|kl|accuracy, ablation=mean|zero|resample,
    /// scope=heads|heads_and_mlps, edges=mean|knockout, align=position|label, model=NAME-OR-DIR.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// A model named on the command line, relative to the working directory (kept relative, so
/// messages show it as typed); the built-in default when none is named.
pub fn model_source(spec: Option<&str>) -> miette::Result<ModelSource> {
    match spec {
        Some(spec) => Ok(ModelSource::parse(spec, Path::new(""))?),
        None => Ok(ModelSource::default_model()),
    }
}

impl SettingArgs {
    /// The parsed `--set` overrides, in order (an unknown key is a coded error).
    pub fn overrides(&self) -> miette::Result<Vec<SettingOverride>> {
        Ok(self
            .set
            .iter()
            .map(|text| SettingOverride::parse(text))
            .collect::<Result<_, _>>()?)
    }

    /// The resolve options: the model of `--model` or, failing that, of `--set model=...`
    /// (the last one), and every other override.
    pub fn options(&self) -> miette::Result<ResolveOptions> {
        let overrides = self.overrides()?;
        let set_model = overrides.iter().rev().find_map(|o| match &o.setting {
            Override::Model(m) => Some(m.as_str()),
            _ => None,
        });
        let model = self.model.as_deref().or(set_model);
        Ok(ResolveOptions {
            model_override: model.map(|m| model_source(Some(m))).transpose()?,
            overrides,
        })
    }
}
