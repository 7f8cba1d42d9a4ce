//! Built-in dataset generators: sequence continuation (numerals, number words, months, days,
//! letters; bare or in templates) and IOI. Seeded with ChaCha8, drawing only `u32` ranges, so a
//! seed gives the same prompts on every platform.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::DataError;
use super::jsonl::fill_template;
use super::lexicon::{lexicon, Lexicon};
use super::record::{Dataset, Record};
use super::source::ParamValue;

/// A built-in generator as `circuit dataset --list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinInfo {
    pub name: &'static str,
    pub description: &'static str,
}

const SEQCONT_PARAMS: &str =
    "n (prompts, 64), seed (0), len (members shown, 2..=6, 4), form (\"bare\" | \"template\"), distractor (\"last\" | \"first\")";
const IOI_PARAMS: &str =
    "n (prompts, 64), seed (0), template (index of one lexicon template, 0..=3; default: random per prompt)";

/// Every built-in generator, in the order `--list` prints them.
pub const BUILTINS: [BuiltinInfo; 6] = [
    BuiltinInfo {
        name: "seqcont.numerals",
        description: "sequence continuation over numerals 1-99: \"1 2 3 4\" -> \" 5\"",
    },
    BuiltinInfo {
        name: "seqcont.number_words",
        description: "sequence continuation over number words one-twenty: \"one two three four\" -> \" five\"",
    },
    BuiltinInfo {
        name: "seqcont.months",
        description: "sequence continuation over months, wrapping: \"November December\" -> \" January\"",
    },
    BuiltinInfo {
        name: "seqcont.days",
        description: "sequence continuation over days of the week, wrapping: \"Monday Tuesday\" -> \" Wednesday\"",
    },
    BuiltinInfo {
        name: "seqcont.letters",
        description: "sequence continuation over letters A-Z: \"A B C D\" -> \" E\"",
    },
    BuiltinInfo {
        name: "ioi",
        description: "indirect object identification: \"When Mary and John went to the store, John gave a drink to\" -> \" Mary\"",
    },
];

/// Whether `name` is a built-in generator.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|b| b.name == name)
}

/// The parameters a generator accepts, described for help lines.
pub fn parameters_help(name: &str) -> &'static str {
    if name == "ioi" {
        IOI_PARAMS
    } else {
        SEQCONT_PARAMS
    }
}

/// How sequence prompts are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqForm {
    /// `"1 2 3 4"`.
    Bare,
    /// `"Van done in 1. Hat done in 2. ... Sun done in"`.
    Template,
}

/// Which shown member is the distractor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistractorChoice {
    /// The last member shown, repeated (as in the research).
    Last,
    First,
}

/// The parameters of a sequence-continuation generator.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqParams {
    pub kind: String,
    pub n: usize,
    pub seed: u64,
    pub len: usize,
    pub form: SeqForm,
    pub distractor: DistractorChoice,
}

/// The parameters of the IOI generator.
#[derive(Clone, Debug, PartialEq)]
pub struct IoiParams {
    pub n: usize,
    pub seed: u64,
    /// Use only this template of the lexicon (so every prompt has the same shape); `None`
    /// draws one per prompt.
    pub template: Option<usize>,
}

/// A built-in dataset with its parameters checked.
#[derive(Clone, Debug, PartialEq)]
pub enum BuiltinSpec {
    Seqcont(SeqParams),
    Ioi(IoiParams),
}

const MAX_PROMPTS: i64 = 1_000_000;

/// Reads the parameter map of a generator, rejecting unknown names and bad values.
struct ParamReader<'a> {
    dataset: &'a str,
    params: &'a BTreeMap<String, ParamValue>,
}

impl ParamReader<'_> {
    fn bad(&self, message: String) -> DataError {
        DataError::BadParameter {
            dataset: self.dataset.to_string(),
            message,
            help: format!("parameters: {}", parameters_help(self.dataset)),
        }
    }

    fn check_known(&self, known: &[&str]) -> Result<(), DataError> {
        match self.params.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(self.bad(format!("unknown parameter `{unknown}`"))),
            None => Ok(()),
        }
    }

    fn int(&self, key: &str, default: i64, min: i64, max: i64) -> Result<i64, DataError> {
        match self.params.get(key) {
            None => Ok(default),
            Some(ParamValue::Int(v)) if (min..=max).contains(v) => Ok(*v),
            Some(ParamValue::Int(v)) => {
                Err(self.bad(format!("`{key}` is {v}; it must be in {min}..={max}")))
            }
            Some(other) => Err(self.bad(format!("`{key}` must be an integer, not {other:?}"))),
        }
    }

    fn choice(&self, key: &str, choices: &[&'static str]) -> Result<&'static str, DataError> {
        match self.params.get(key) {
            None => Ok(choices[0]),
            Some(ParamValue::Str(s)) => choices
                .iter()
                .find(|c| **c == s.as_str())
                .copied()
                .ok_or_else(|| self.bad(format!("`{key}` is {s:?}; it is one of {choices:?}"))),
            Some(other) => Err(self.bad(format!(
                "`{key}` must be a string, one of {choices:?}, not {other:?}"
            ))),
        }
    }
}

/// Checks a built-in's name and parameters.
pub fn spec(name: &str, params: &BTreeMap<String, ParamValue>) -> Result<BuiltinSpec, DataError> {
    if !is_builtin(name) {
        let mut names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        names.sort_by(|a, b| {
            strsim::jaro_winkler(name, b)
                .partial_cmp(&strsim::jaro_winkler(name, a))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        return Err(DataError::UnknownBuiltin {
            name: name.to_string(),
            help: format!(
                "did you mean `{}`? built-in datasets: {} (or give a path to a .jsonl file)",
                names[0],
                BUILTINS.map(|b| b.name).join(", ")
            ),
        });
    }
    let reader = ParamReader {
        dataset: name,
        params,
    };
    let n = reader.int("n", 64, 1, MAX_PROMPTS)? as usize;
    let seed = reader.int("seed", 0, 0, i64::MAX)? as u64;
    if name == "ioi" {
        reader.check_known(&["n", "seed", "template"])?;
        let last_template = lexicon()?.ioi.templates.len() as i64 - 1;
        let template = match reader.params.get("template") {
            None => None,
            Some(_) => Some(reader.int("template", 0, 0, last_template)? as usize),
        };
        return Ok(BuiltinSpec::Ioi(IoiParams { n, seed, template }));
    }
    reader.check_known(&["n", "seed", "len", "form", "distractor"])?;
    let len = reader.int("len", 4, 2, 6)? as usize;
    let form = match reader.choice("form", &["bare", "template"])? {
        "bare" => SeqForm::Bare,
        _ => SeqForm::Template,
    };
    let distractor = match reader.choice("distractor", &["last", "first"])? {
        "last" => DistractorChoice::Last,
        _ => DistractorChoice::First,
    };
    let kind = name.trim_start_matches("seqcont.").to_string();
    Ok(BuiltinSpec::Seqcont(SeqParams {
        kind,
        n,
        seed,
        len,
        form,
        distractor,
    }))
}

/// The slot labels every prompt of a built-in defines (no generation, no tokenizer).
pub fn labels(spec: &BuiltinSpec) -> Vec<String> {
    match spec {
        BuiltinSpec::Seqcont(p) => (1..=p.len).map(|i| format!("S{i}")).collect(),
        BuiltinSpec::Ioi(_) => ["IO", "S1", "S2", "PLACE", "OBJECT"]
            .map(String::from)
            .to_vec(),
    }
}

/// Generates a built-in dataset: `n` clean prompts and `n` paired reference prompts.
pub fn generate(name: &str, spec: &BuiltinSpec) -> Result<Dataset, DataError> {
    let lexicon = lexicon()?;
    let (clean, reference) = match spec {
        BuiltinSpec::Seqcont(p) => seqcont(lexicon, p)?,
        BuiltinSpec::Ioi(p) => ioi(lexicon, p)?,
    };
    let dataset = Dataset {
        name: name.to_string(),
        clean,
        reference,
        paired: true,
    };
    dataset.validate()?;
    Ok(dataset)
}

/// A uniform index below `n`. Only `u32` ranges are drawn, whose sampling is the same on every
/// platform (a `usize` range could depend on the pointer width).
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    rng.random_range(0..n as u32) as usize
}

/// `k` distinct indices below `n`, in random order (partial Fisher-Yates).
fn distinct(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + below(rng, n - i);
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

fn lexicon_error(message: String) -> DataError {
    DataError::Lexicon { message }
}

type Sets = (Vec<Record>, Vec<Record>);

fn seqcont(lexicon: &Lexicon, p: &SeqParams) -> Result<Sets, DataError> {
    let kind = lexicon
        .sequences
        .get(&p.kind)
        .ok_or_else(|| lexicon_error(format!("no sequence kind {:?}", p.kind)))?;
    let members = &kind.members;
    let count = members.len();
    // Without wrapping, the answer (member start + len) must exist.
    let starts = if kind.wraps {
        count
    } else {
        count.saturating_sub(p.len)
    };
    if starts == 0 || (kind.wraps && count < 2) {
        return Err(lexicon_error(format!(
            "sequence {:?} has too few members for len {}",
            p.kind, p.len
        )));
    }
    let template = lexicon
        .templates
        .get(&kind.template)
        .ok_or_else(|| lexicon_error(format!("no template {:?}", kind.template)))?;
    let fillers = lexicon.fillers(&template.fillers)?;
    if p.form == SeqForm::Template && fillers.len() < p.len + 1 {
        return Err(lexicon_error(format!(
            "filler list {:?} has fewer than {} entries",
            template.fillers,
            p.len + 1
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let (mut clean, mut reference) = (Vec::with_capacity(p.n), Vec::with_capacity(p.n));
    for _ in 0..p.n {
        // Draw order is part of the format: clean members, fillers, reference members.
        let start = below(&mut rng, starts);
        let shown: Vec<usize> = (0..p.len).map(|j| (start + j) % count).collect();
        let answer = &members[(start + p.len) % count];
        let distractor = match p.distractor {
            DistractorChoice::Last => &members[shown[p.len - 1]],
            DistractorChoice::First => &members[shown[0]],
        };
        let chosen_fillers: Vec<&str> = match p.form {
            SeqForm::Bare => Vec::new(),
            SeqForm::Template => distinct(&mut rng, fillers.len(), p.len + 1)
                .into_iter()
                .map(|i| fillers[i].as_str())
                .collect(),
        };
        let random: Vec<usize> = (0..p.len).map(|_| below(&mut rng, count)).collect();
        let make = |member_indices: &[usize]| -> Result<Record, DataError> {
            let shown_members: Vec<&str> = member_indices
                .iter()
                .map(|&i| members[i].as_str())
                .collect();
            let (prompt, slots) = match p.form {
                SeqForm::Bare => sequence_prompt(&shown_members),
                SeqForm::Template => templated_sequence_prompt(
                    &template.sentence,
                    &template.query,
                    &shown_members,
                    &chosen_fillers,
                )?,
            };
            Ok(Record {
                prompt,
                slots,
                answer: Some(format!(" {answer}")),
                distractor: Some(format!(" {distractor}")),
            })
        };
        clean.push(make(&shown)?);
        reference.push(make(&random)?);
    }
    Ok((clean, reference))
}

/// `"1 2 3 4"` with S1…Sn on the members.
fn sequence_prompt(members: &[&str]) -> (String, BTreeMap<String, super::record::Span>) {
    let mut prompt = String::new();
    let mut slots = BTreeMap::new();
    for (j, member) in members.iter().enumerate() {
        if j > 0 {
            prompt.push(' ');
        }
        let start = prompt.len();
        prompt.push_str(member);
        slots.insert(
            format!("S{}", j + 1),
            super::record::Span::new(start, prompt.len()),
        );
    }
    (prompt, slots)
}

/// `"Van done in 1. Hat done in 2. Sun done in"`: one sentence per member, then the query with
/// the last filler; S1…Sn on the members.
fn templated_sequence_prompt(
    sentence: &str,
    query: &str,
    members: &[&str],
    fillers: &[&str],
) -> Result<(String, BTreeMap<String, super::record::Span>), DataError> {
    let mut template_parts = Vec::with_capacity(members.len() + 1);
    let mut values = BTreeMap::new();
    for (j, member) in members.iter().enumerate() {
        template_parts.push(
            sentence
                .replace("{filler}", &format!("{{F{j}}}"))
                .replace("{member}", &format!("{{S{}}}", j + 1)),
        );
        values.insert(format!("F{j}"), fillers[j].to_string());
        values.insert(format!("S{}", j + 1), member.to_string());
    }
    let last = members.len();
    template_parts.push(query.replace("{filler}", &format!("{{F{last}}}")));
    values.insert(format!("F{last}"), fillers[last].to_string());
    let (prompt, mut slots) = fill_template(&template_parts.join(" "), &values)
        .map_err(|m| lexicon_error(format!("sequence template: {m}")))?;
    // Fillers are not labels of these datasets; only the members are.
    slots.retain(|label, _| label.starts_with('S'));
    Ok((prompt, slots))
}

fn ioi(lexicon: &Lexicon, p: &IoiParams) -> Result<Sets, DataError> {
    let ioi = &lexicon.ioi;
    if ioi.names.len() < 3
        || ioi.templates.is_empty()
        || ioi.places.is_empty()
        || ioi.objects.is_empty()
    {
        return Err(lexicon_error(
            "the ioi section needs 3 names and a template, place and object".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let (mut clean, mut reference) = (Vec::with_capacity(p.n), Vec::with_capacity(p.n));
    for _ in 0..p.n {
        // Draw order is part of the format: template, IO and S, place, object, then A, B, C.
        // Drawn even when fixed, so the names of prompt i do not depend on `template`.
        let drawn = below(&mut rng, ioi.templates.len());
        let template = &ioi.templates[p.template.unwrap_or(drawn)];
        let io_s = distinct(&mut rng, ioi.names.len(), 2);
        let place = &ioi.places[below(&mut rng, ioi.places.len())];
        let object = &ioi.objects[below(&mut rng, ioi.objects.len())];
        let abc = distinct(&mut rng, ioi.names.len(), 3);
        let make = |io: usize, s1: usize, s2: usize| -> Result<(String, _), DataError> {
            let fillers: BTreeMap<String, String> = [
                ("IO", &ioi.names[io]),
                ("S1", &ioi.names[s1]),
                ("S2", &ioi.names[s2]),
                ("PLACE", place),
                ("OBJECT", object),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
            fill_template(template, &fillers)
                .map_err(|m| lexicon_error(format!("ioi template {template:?}: {m}")))
        };
        let answer = Some(format!(" {}", ioi.names[io_s[0]]));
        let distractor = Some(format!(" {}", ioi.names[io_s[1]]));
        let (prompt, slots) = make(io_s[0], io_s[1], io_s[1])?;
        clean.push(Record {
            prompt,
            slots,
            answer: answer.clone(),
            distractor: distractor.clone(),
        });
        // The ABC distribution: the same sentence with three different names.
        let (prompt, slots) = make(abc[0], abc[1], abc[2])?;
        reference.push(Record {
            prompt,
            slots,
            answer,
            distractor,
        });
    }
    Ok((clean, reference))
}
