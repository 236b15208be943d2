//! The knowledge base (BCN): the rules operators write to say which
//! specialist diagnoses (and may fix) which alarm, and their evaluation.
//!
//! What it is for: reading a directory of TOML rules files into a checked
//! [`KnowledgeBase`] (a set with any error is refused whole, with every
//! error's `file:line:column`), deciding which rule acts on an alarm
//! ([`KnowledgeBase::evaluate`], [`KnowledgeBase::explain`] for `agad kb
//! test`), and saying which scheduled starts and stops are due
//! ([`KnowledgeBase::due`]). What it is not for: shipping or running
//! specialists, storing outcomes or replicating rules — the domain
//! manager's dispatcher consumes [`Decision`]s and does that. No I/O except
//! [`KnowledgeBase::load_dir`], and no clock: every call takes the time.
//!
//! The language is described in `knowledge-base/README.md`, with a
//! commented example in `knowledge-base/examples/rules/`.
//!
//! ```
//! use agad_knowledge_base::{Action, Catalog, KnowledgeBase, State};
//! use agad_protocol::manifest::{ConfigKey, ConfigType};
//! # use agad_protocol::message::{Alarm, Comparison, Provenance, Severity};
//!
//! let mut catalog = Catalog::default();
//! catalog.keys.insert("fs.used:*".into());
//! catalog.specialists.insert("disk-usage".into(), vec![ConfigKey {
//!     name: "path".into(), kind: ConfigType::String, required: true,
//!     default: None, description: "where to look".into(),
//! }]);
//! let rules = r#"
//! [[rule]]
//! name = "disk-full"
//! [rule.match]
//! key = "fs.used:*"
//! severity = "major"
//! [rule.diagnose]
//! specialist = "disk-usage"
//! args = { path = "{subject}" }
//! "#;
//! let kb = KnowledgeBase::parse(&[("rules/disk.toml".into(), rules.into())], &catalog)
//!     .expect("the rules are valid");
//!
//! # let alarm = Alarm {
//! #     id: "web-1/disk-space/1".into(), node: "web-1".into(), module: "disk-space".into(),
//! #     provenance: Provenance::default(), area: agad_protocol::Area::Performance,
//! #     key: "fs.used:/var".into(), metric: "fs.used-percent".into(), subject: "/var".into(),
//! #     severity: Severity::Critical, raised: true, value: 97.0, threshold: 90.0,
//! #     comparison: Comparison::Above, message: String::new(), time_ms: 0,
//! # };
//! // `alarm`: a critical `fs.used:/var` alarm with subject `/var`.
//! let mut state = State::default();
//! let now_ms = 1_795_780_800_000; // the caller's clock
//! let decisions = kb.evaluate(&mut state, &alarm, now_ms);
//! assert_eq!(decisions[0].rule.name, "disk-full");
//! let Action::Chain(chain) = &decisions[0].rule.action else { unreachable!() };
//! assert_eq!(chain.diagnose.render_args(&alarm, &[]).unwrap(), [("path".to_owned(), "/var".to_owned())]);
//!
//! // A typo is refused with its position.
//! let errors = KnowledgeBase::parse(
//!     &[("rules/disk.toml".into(), rules.replace("{subject}", "{subjct}"))],
//!     &catalog,
//! )
//! .unwrap_err();
//! assert!(errors[0].to_string().starts_with("rules/disk.toml:9:17: argument `path`: unknown placeholder `{subjct}`"));
//! ```
//!
//! Layout:
//! - [`catalog`]: what rules may name (specialists and their arguments,
//!   inspectors, keys, metrics), filled by the caller.
//! - [`model`]: the checked rules, actions, argument templates and schedules.
//! - `parse`: TOML with spans → model, collecting every error.
//! - `eval`: the index, matching, explanations and due schedules.
//! - `diff`: what replacing one rule set by another changes (`--dry-run`).
//! - [`state`]: bounded repetition and rule-hit memory.
//! - [`time`]: UTC calendar arithmetic (hours, days, dates).

pub mod catalog;
mod diff;
mod eval;
pub mod model;
mod parse;
pub mod state;
pub mod time;

pub use agad_protocol::source::SourceError;
pub use catalog::Catalog;
pub use diff::{Changes, Diff};
pub use eval::{Considered, Decision, Explanation, KnowledgeBase, Verdict};
pub use model::{
    Action, After, Chain, Due, FactCondition, Fix, KeyPattern, Match, MissingFact, NodeSet, Origin,
    Repeat, Rule, Schedule, StartModule, Step, Targets, Template, Transition,
};
pub use parse::{
    DEFAULT_CONFIRM_MS, DEFAULT_DIAGNOSE_DEADLINE_MS, DEFAULT_FIX_DEADLINE_MS, MAX_REPEAT_COUNT,
    MAX_STEP_DEADLINE_MS, MAX_WINDOW_MS,
};
pub use state::State;

use agad_protocol::duration::format_duration_ms;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest rules file read (a rule set is text an operator writes).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a rule set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// Every error of the set; the set is refused whole.
    #[error("{}", Invalid(.0))]
    Invalid(Vec<SourceError>),
}

/// One error per line, as `file:line:column: reason`.
struct Invalid<'a>(&'a [SourceError]);

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl KnowledgeBase {
    /// Parses and checks a rule set given as (file name, text) pairs; the
    /// names label errors and order the rules (files by name). Every error
    /// of every file is returned; none of the set is kept if there is one.
    pub fn parse(
        files: &[(String, String)],
        catalog: &Catalog,
    ) -> Result<KnowledgeBase, Vec<SourceError>> {
        let mut files: Vec<&(String, String)> = files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let files: Vec<(String, String)> = files.into_iter().cloned().collect();
        parse::parse(&files, catalog).map(KnowledgeBase::build)
    }

    /// Reads every `*.toml` file directly in `dir` (not its subfolders, so a
    /// `drafts/` folder stays out) as one rule set. Errors name files as
    /// `dir/file.toml`.
    pub fn load_dir(dir: &Path, catalog: &Catalog) -> Result<KnowledgeBase, KbError> {
        let files: Vec<(String, String)> = read_dir(dir)?
            .into_iter()
            .map(|(path, text)| (path.display().to_string(), text))
            .collect();
        KnowledgeBase::parse(&files, catalog).map_err(KbError::Invalid)
    }

    /// Every specialist the rules run (diagnoses and fixes), by name: what
    /// a domain needs in its BC to act on them.
    pub fn specialists(&self) -> std::collections::BTreeSet<&str> {
        let mut names = std::collections::BTreeSet::new();
        for rule in self.rules() {
            if let Action::Chain(chain) = &rule.action {
                names.insert(chain.diagnose.specialist.as_str());
                if let Some(fix) = &chain.fix {
                    names.insert(fix.step.specialist.as_str());
                }
            }
        }
        names
    }

    /// Every resident module the rules and schedules start or stop, by
    /// name: what a domain needs in its BC to ship when they fire.
    pub fn started_modules(&self) -> std::collections::BTreeSet<&str> {
        let mut names: std::collections::BTreeSet<&str> =
            self.schedules().iter().map(|s| s.module.as_str()).collect();
        for rule in self.rules() {
            match &rule.action {
                Action::Start(start) => {
                    names.insert(start.module.as_str());
                }
                Action::Stop { module } => {
                    names.insert(module.as_str());
                }
                Action::Chain(_) => {}
            }
        }
        names
    }
}

/// Largest rule set, all its files together: it travels whole in every
/// domain's replica (a frame of at most 32 MiB), nested sub-domains
/// included. 10,000 rules are about 1.5 MB.
pub const MAX_SET_BYTES: u64 = 8 * 1024 * 1024;

/// Most rules files one set may hold (`agad kb apply` and the top manager
/// refuse more).
pub const MAX_FILES: usize = 256;

/// The rules files of a directory: every `*.toml` file directly in `dir`
/// (not its subfolders), by path, with its text; unparsed (`agad kb apply`
/// sends them as they are to the top manager, which checks them).
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, KbError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KbError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|e| e != "toml") || !path.is_file() {
            continue;
        }
        let size = std::fs::metadata(&path).map_err(io(&path))?.len();
        if size > MAX_FILE_BYTES {
            return Err(KbError::Unreadable {
                path,
                reason: format!("{size} bytes; a rules file is at most {MAX_FILE_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        files.push((path, text));
    }
    if files.is_empty() {
        return Err(KbError::Unreadable {
            path: dir.to_owned(),
            reason: "no rules files (`*.toml`) here".to_owned(),
        });
    }
    if files.len() > MAX_FILES {
        return Err(KbError::Unreadable {
            path: dir.to_owned(),
            reason: format!(
                "{} rules files; a rule set has at most {MAX_FILES}",
                files.len()
            ),
        });
    }
    let total: u64 = files.iter().map(|(_, text)| text.len() as u64).sum();
    if total > MAX_SET_BYTES {
        return Err(KbError::Unreadable {
            path: dir.to_owned(),
            reason: format!("{total} bytes of rules; a rule set is at most {MAX_SET_BYTES}"),
        });
    }
    files.sort();
    Ok(files)
}

/// An action in one line (`diagnose top-cpu (30s) → fix ... → escalate to noc`).
pub fn action_summary(action: &Action) -> String {
    let step = |s: &Step| {
        let args: Vec<String> = s.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{}({}) within {}",
            s.specialist,
            args.join(", "),
            format_duration_ms(s.deadline_ms)
        )
    };
    match action {
        Action::Chain(chain) => {
            let mut text = format!("diagnose {}", step(&chain.diagnose));
            if let Some(fix) = &chain.fix {
                let when = fix
                    .condition
                    .as_ref()
                    .map_or("the diagnosis succeeded".to_owned(), |c| c.to_string());
                text.push_str(&format!(" → if {when}, fix {}", step(&fix.step)));
            }
            if let Some(ms) = chain.confirm_within_ms {
                text.push_str(&format!(
                    " → confirm cleared within {}",
                    format_duration_ms(ms)
                ));
            }
            if let Some(to) = &chain.escalate {
                text.push_str(&format!(" → else escalate to {to}"));
            }
            text
        }
        Action::Start(start) => {
            let config: Vec<String> = start
                .config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut text = format!(
                "start {}({}) on the alarm's node",
                start.module,
                config.join(", ")
            );
            if let Some(ms) = start.for_ms {
                text.push_str(&format!(" for {}", format_duration_ms(ms)));
            }
            text
        }
        Action::Stop { module } => format!("stop {module} on the alarm's node"),
    }
}

/// Fixtures shared by the unit tests of every module.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod fixtures {
    use super::*;
    use agad_protocol::manifest::{ConfigKey, ConfigType};
    use agad_protocol::message::{Alarm, Comparison, Provenance, Severity};

    fn key(name: &str, kind: ConfigType, required: bool) -> ConfigKey {
        ConfigKey {
            name: name.into(),
            kind,
            required,
            default: None,
            description: format!("the {name}"),
        }
    }

    pub fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.specialists.insert(
            "top-cpu".into(),
            vec![
                key("sample", ConfigType::Duration, false),
                key("count", ConfigType::Integer, false),
            ],
        );
        c.specialists.insert(
            "disk-usage".into(),
            vec![key("path", ConfigType::String, true)],
        );
        c.specialists.insert(
            "service-restart".into(),
            vec![
                key("service", ConfigType::String, true),
                key("limit", ConfigType::Number, false),
            ],
        );
        c.modules.insert(
            "cpu-mem".into(),
            vec![key("threshold", ConfigType::Number, false)],
        );
        c.modules.insert("disk-space".into(), vec![]);
        c.modules.insert(
            "link-watch".into(),
            vec![key("target", ConfigType::String, true)],
        );
        for k in ["cpu.total", "load.per-core", "fs.used:*"] {
            c.keys.insert(k.into());
        }
        for m in ["cpu.total-percent", "fs.used-percent"] {
            c.metrics.insert(m.into());
        }
        c
    }

    /// A raised major CPU alarm on `web-1`.
    pub fn alarm() -> Alarm {
        Alarm {
            id: "web-1/cpu-mem/1".into(),
            node: "web-1".into(),
            module: "cpu-mem".into(),
            provenance: Provenance::default(),
            area: agad_protocol::Area::Performance,
            key: "cpu.total".into(),
            metric: "cpu.total-percent".into(),
            subject: String::new(),
            severity: Severity::Major,
            raised: true,
            value: 97.0,
            threshold: 90.0,
            comparison: Comparison::Above,
            message: "CPU high".into(),
            time_ms: 0,
        }
    }

    pub fn kb(text: &str) -> KnowledgeBase {
        KnowledgeBase::parse(&[("rules.toml".into(), text.into())], &catalog())
            .unwrap_or_else(|errors| panic!("{}", KbError::Invalid(errors)))
    }

    pub fn errors(text: &str) -> Vec<SourceError> {
        KnowledgeBase::parse(&[("rules.toml".into(), text.into())], &catalog()).unwrap_err()
    }

    /// The one error `text` gets, which must be at (`line`, `column`) and
    /// contain `reason`.
    pub fn refused(text: &str, at: (usize, usize), reason: &str) -> SourceError {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{}", KbError::Invalid(errors.clone()));
        let e = errors.into_iter().next().unwrap();
        assert_eq!((e.line, e.column), at, "{e}");
        assert!(e.reason.contains(reason), "`{}` lacks `{reason}`", e.reason);
        e
    }

    /// Milliseconds of a UTC date-time (`2026-11-27T08:00:00Z`).
    pub fn at(text: &str) -> u64 {
        time::datetime_ms(&text.parse().unwrap()).unwrap()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::fixtures::kb;

    #[test]
    fn specialists_are_the_diagnoses_and_fixes_the_rules_run() {
        let kb = kb(concat!(
            "[[rule]]\nname = \"cpu\"\n[rule.match]\nkey = \"cpu.total\"\n",
            "[rule.diagnose]\nspecialist = \"top-cpu\"\n",
            "[rule.fix]\nspecialist = \"service-restart\"\nargs = { service = \"web\" }\n",
            "[[rule]]\nname = \"disk\"\n[rule.match]\nkey = \"fs.used:*\"\n",
            "[rule.diagnose]\nspecialist = \"top-cpu\"\n",
            "[[rule]]\nname = \"probe\"\n[rule.match]\nseverity = \"critical\"\n",
            "[rule.start]\nmodule = \"link-watch\"\nconfig = { target = \"gw\" }\n",
        ));
        assert_eq!(
            kb.specialists().into_iter().collect::<Vec<_>>(),
            ["service-restart", "top-cpu"]
        );
        assert_eq!(
            kb.started_modules().into_iter().collect::<Vec<_>>(),
            ["link-watch"]
        );
    }

    #[test]
    fn a_directory_is_read_whole_in_name_order_without_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.toml"), "# b").unwrap();
        std::fs::write(dir.path().join("a.toml"), "# a").unwrap();
        std::fs::write(dir.path().join("notes.md"), "not rules").unwrap();
        std::fs::create_dir(dir.path().join("drafts")).unwrap();
        std::fs::write(dir.path().join("drafts/c.toml"), "# c").unwrap();
        let files = crate::read_dir(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.toml", "b.toml"]);
        assert_eq!(files[0].1, "# a");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            crate::read_dir(empty.path())
                .unwrap_err()
                .to_string()
                .contains("no rules files")
        );
    }
}
