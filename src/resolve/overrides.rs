//! `--set KEY=VALUE`: a setting overridden from the command line without editing the file.
//! The keys are the language's settings (docs/language.md, "Overriding settings"); this module
//! owns their spelling and the parsing of `KEY=VALUE`, and `settings.rs` applies them where the
//! file's own settings are bound, so an override is checked exactly as the setting would be.

use super::bound::{AblationKind, Alignment, EdgeAblation, Metric, Scope};
use super::diagnostics as code;
use crate::data::ParamValue;
use crate::util::did_you_mean;

/// The keys `--set` takes (besides `dataset.PARAM`), as the help lists them.
pub const KEYS: &[&str] = &["model", "metric", "ablation", "scope", "edges", "align"];

/// One `--set KEY=VALUE`, parsed and its value checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingOverride {
    /// As written (trimmed), for reports: `metric=prob`.
    pub text: String,
    pub setting: Override,
}

/// What an override sets, to what.
#[derive(Clone, Debug, PartialEq)]
pub enum Override {
    /// `model`: as `--model` (the CLI turns it into [`super::ResolveOptions::model_override`]).
    Model(String),
    /// `dataset.PARAM`: a parameter of the evaluated dataset's built-in generator.
    DatasetParam(String, ParamValue),
    Metric(Metric),
    /// `ablation`: the method of `ablate heads … by METHOD`.
    Ablation(AblationKind),
    /// `scope`: `heads` or `heads_and_mlps` (`ablate heads [and mlps] by …`).
    Scope(Scope),
    /// `edges`: the method of `ablate edges by METHOD` (`mean` or `knockout`).
    Edges(EdgeAblation),
    /// `align`: `position` or `label`.
    Align(Alignment),
}

impl std::fmt::Display for SettingOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A `--set` argument that is not `KEY=VALUE` with a known key
/// (`circuit::resolve::unknown_setting`) and a value of that setting
/// (`circuit::resolve::bad_override`).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("--set {text}: {problem}")]
pub struct BadOverride {
    pub code: &'static str,
    pub text: String,
    pub problem: String,
    pub help: String,
}

impl miette::Diagnostic for BadOverride {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(&self.help))
    }
}

impl SettingOverride {
    /// Parses `KEY=VALUE`; an unknown key or a value the setting does not take is an error
    /// with a did-you-mean.
    pub fn parse(text: &str) -> Result<SettingOverride, BadOverride> {
        let keys_help = format!(
            "keys: {}, dataset.PARAM (a built-in generator's parameter, e.g. dataset.n=256)",
            KEYS.join(", ")
        );
        let bad = |code, problem: String, help: String| BadOverride {
            code,
            text: text.to_string(),
            problem,
            help,
        };
        let Some((key, value)) = text.split_once('=') else {
            return Err(bad(
                code::UNKNOWN_SETTING,
                "not KEY=VALUE".into(),
                format!("write e.g. --set metric=prob; {keys_help}"),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(bad(
                code::BAD_OVERRIDE,
                format!("`{key}` is given no value"),
                keys_help,
            ));
        }
        let named_value = |options: &[&'static str]| -> Result<usize, BadOverride> {
            if let Some(i) = options.iter().position(|name| *name == value) {
                return Ok(i);
            }
            let help = match did_you_mean(value, options.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? one of: {}", options.join(", ")),
                None => format!("one of: {}", options.join(", ")),
            };
            Err(bad(
                code::BAD_OVERRIDE,
                format!("`{value}` is not a value of `{key}`"),
                help,
            ))
        };
        let setting = match key {
            "model" => Override::Model(value.to_string()),
            "metric" => Override::Metric(pick(&METRICS, named_value)?),
            "ablation" => Override::Ablation(pick(&ABLATIONS, named_value)?),
            "scope" => Override::Scope(pick(&SCOPES, named_value)?),
            "edges" => Override::Edges(pick(&EDGES, named_value)?),
            "align" => Override::Align(pick(&ALIGNMENTS, named_value)?),
            _ => match key.strip_prefix("dataset.") {
                Some(param) if !param.is_empty() => {
                    Override::DatasetParam(param.to_string(), param_value(value))
                }
                _ => {
                    let known = KEYS.iter().copied().chain(["dataset.n"]);
                    let help = match did_you_mean(key, known) {
                        Some(s) => format!("did you mean `{s}`? {keys_help}"),
                        None => keys_help,
                    };
                    return Err(bad(
                        code::UNKNOWN_SETTING,
                        format!("no setting `{key}`"),
                        help,
                    ));
                }
            },
        };
        Ok(SettingOverride {
            text: format!("{key}={value}"),
            setting,
        })
    }
}

/// The value of `options` (name, value) whose name `find` picks.
fn pick<T: Copy, E>(
    options: &[(&'static str, T)],
    find: impl Fn(&[&'static str]) -> Result<usize, E>,
) -> Result<T, E> {
    let names: Vec<&'static str> = options.iter().map(|(n, _)| *n).collect();
    find(&names).map(|i| options[i].1)
}

/// Each setting's values under the names reports print them by
/// ([`super::bound::SettingName`], tested below); edges take
/// the language's words (`ablate edges by mean`), not the report's `edge_mean`.
const METRICS: [(&str, Metric); 5] = [
    ("logit_diff", Metric::LogitDiff),
    ("prob", Metric::Prob),
    ("logprob", Metric::Logprob),
    ("kl", Metric::Kl),
    ("accuracy", Metric::Accuracy),
];
const ABLATIONS: [(&str, AblationKind); 3] = [
    ("mean", AblationKind::Mean),
    ("zero", AblationKind::Zero),
    ("resample", AblationKind::Resample),
];
const SCOPES: [(&str, Scope); 2] = [
    ("heads", Scope::Heads),
    ("heads_and_mlps", Scope::HeadsAndMlps),
];
const EDGES: [(&str, EdgeAblation); 2] = [
    ("mean", EdgeAblation::EdgeMean),
    ("knockout", EdgeAblation::Knockout),
];
const ALIGNMENTS: [(&str, Alignment); 2] = [
    ("position", Alignment::Position),
    ("label", Alignment::Label),
];

/// A generator parameter as the language reads one: an integer, a number, `true`/`false`, or
/// else a string.
fn param_value(text: &str) -> ParamValue {
    if let Ok(i) = text.parse::<i64>() {
        ParamValue::Int(i)
    } else if let (true, Ok(x)) = (
        text.chars().any(|c| c.is_ascii_digit()),
        text.parse::<f64>(),
    ) {
        ParamValue::Float(x)
    } else if text == "true" || text == "false" {
        ParamValue::Bool(text == "true")
    } else {
        ParamValue::Str(text.trim_matches('"').to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::bound::SettingName;

    /// One spelling: `--set` takes a setting's values by the names reports print.
    #[test]
    fn values_are_spelled_as_reports_print_them() {
        fn same<T: SettingName>(options: &[(&str, T)]) {
            for (name, value) in options {
                assert_eq!(*name, value.name());
            }
        }
        same(&METRICS);
        same(&ABLATIONS);
        same(&SCOPES);
        same(&ALIGNMENTS);
        assert_eq!(EDGES[1].1.name(), "knockout");
    }

    #[test]
    fn keys_and_values_are_checked_with_a_did_you_mean() {
        let o = SettingOverride::parse(" metric = prob ").unwrap();
        assert_eq!(
            (o.text.as_str(), &o.setting),
            ("metric=prob", &Override::Metric(Metric::Prob))
        );
        assert_eq!(
            SettingOverride::parse("dataset.n=256").unwrap().setting,
            Override::DatasetParam("n".into(), ParamValue::Int(256))
        );
        let e = SettingOverride::parse("metrc=prob").unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_SETTING);
        assert!(e.help.starts_with("did you mean `metric`?"), "{}", e.help);
        let e = SettingOverride::parse("ablation=zer").unwrap_err();
        assert_eq!(e.code, code::BAD_OVERRIDE);
        assert!(e.help.starts_with("did you mean `zero`?"), "{}", e.help);
        assert_eq!(
            SettingOverride::parse("metric").unwrap_err().code,
            code::UNKNOWN_SETTING
        );
        assert_eq!(
            SettingOverride::parse("metric=").unwrap_err().code,
            code::BAD_OVERRIDE
        );
    }
}
