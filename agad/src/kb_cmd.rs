//! `agad kb ...`: the knowledge base's rules as an operator edits them —
//! check a rules directory, see which rule an alarm would reach and why,
//! publish a rule set through the top manager (`apply`, which checks it
//! against what the deployment can run and replicates it to every domain)
//! and see which domains hold it (`show`).

use crate::admin_cmd::{MorDir, ask};
use agad_gerente_mor::admin::{Answer, Request};
use agad_knowledge_base::{Catalog, KbError, KnowledgeBase, State};
use agad_protocol::ManifestSpec;
use agad_protocol::message::Alarm;
use anyhow::{Context, bail};
use clap::Subcommand;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum KbCommand {
    /// Parse and check a rules directory; print every error as file:line:column: reason.
    Check {
        /// Folder of rules files (`*.toml`).
        dir: PathBuf,
        #[command(flatten)]
        catalog: CatalogArg,
    },
    /// Show which rule an alarm (or each of a sequence of alarms) matches, and why the others do not.
    Test {
        /// Folder of rules files (`*.toml`).
        dir: PathBuf,
        /// JSON: one alarm, an array of alarms, or one alarm per line (`agad alarms --json`).
        /// Missing fields take neutral defaults (raised, no subject, provenance empty).
        alarms: PathBuf,
        /// Evaluate at this UTC time (RFC 3339) instead of each alarm's own `time_ms`.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        catalog: CatalogArg,
    },
    /// Publish a rules directory: the top manager checks it against its
    /// published modules and topology (every error as file:line:column:
    /// reason, nothing stored), prints what it changes, stores it and
    /// replicates it to every domain.
    Apply {
        /// Folder of rules files (`*.toml`, not its subfolders).
        #[arg(value_name = "DIR")]
        rules: PathBuf,
        /// Check and show the difference only; store nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        mor: MorDir,
    },
    /// The rule set in force at the top manager and which domains'
    /// managers acknowledged a replica carrying it.
    Show {
        /// Print it as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mor: MorDir,
    },
    /// How each rule did on the alarms it acted on (from the cases in
    /// BIG), most helpful first: diagnosed, fixed, escalated, failed.
    Stats {
        /// Print it as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mor: MorDir,
    },
}

#[derive(clap::Args)]
pub struct CatalogArg {
    /// What rules may name (TOML: specialists, modules, keys, metrics;
    /// see knowledge-base/examples/catalog.toml). The built-in inspectors
    /// are always known.
    #[arg(long)]
    catalog: Option<PathBuf>,
}

pub fn run(cmd: KbCommand) -> anyhow::Result<()> {
    match cmd {
        KbCommand::Check { dir, catalog } => {
            let kb = load(&dir, &catalog)?;
            println!(
                "OK: {} rule(s), {} schedule(s), {} group(s)",
                kb.rules().len(),
                kb.schedules().len(),
                kb.groups().len()
            );
            Ok(())
        }
        KbCommand::Test {
            dir,
            alarms,
            at,
            catalog,
        } => test(&dir, &alarms, at.as_deref(), &catalog),
        KbCommand::Apply {
            rules,
            dry_run,
            mor,
        } => apply(&mor.dir, &rules, dry_run),
        KbCommand::Show { json, mor } => show(&mor.dir, json),
        KbCommand::Stats { json, mor } => stats(&mor.dir, json),
    }
}

/// Sends every rules file of `dir` (by file name) to the top manager.
fn apply(mor: &Path, dir: &Path, dry_run: bool) -> anyhow::Result<()> {
    let files = agad_knowledge_base::read_dir(dir)?
        .into_iter()
        .map(|(path, text)| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, text)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    match ask(mor, Request::KbApply { files, dry_run })? {
        Answer::KbInvalid { errors } => {
            let mut err = std::io::stderr().lock();
            for e in &errors {
                let file = dir.join(&e.file);
                writeln!(
                    err,
                    "{}:{}:{}: {}",
                    file.display(),
                    e.line,
                    e.column,
                    e.reason
                )?;
            }
            bail!(
                "{} error(s); the rule set is refused as a whole (nothing stored)",
                errors.len()
            )
        }
        Answer::KbDiff {
            changes,
            applied,
            version,
        } => {
            if changes.is_empty() {
                writeln!(out, "no change")?;
            }
            for c in &changes {
                writeln!(out, "{c}")?;
            }
            match (applied, version) {
                (true, Some(v)) => writeln!(out, "applied as version {v}")?,
                _ if dry_run => writeln!(out, "not applied (dry run)")?,
                _ => {}
            }
            Ok(())
        }
        other => bail!("unexpected answer from the top manager: {other:?}"),
    }
}

fn stats(mor: &Path, json: bool) -> anyhow::Result<()> {
    let rows = match ask(mor, Request::KbStats)? {
        Answer::KbStats(rows) => rows,
        Answer::Error(e) => bail!("{e}"),
        _ => bail!("unexpected answer from the top manager"),
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no rule has acted on an alarm yet")?;
        return Ok(());
    }
    let width = rows.iter().map(|r| r.rule.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<width$} {:>6} {:>7} {:>9} {:>6} {:>9} {:>6} {:>9} {:>8} {:>5}",
        "RULE",
        "CASES",
        "HELPED",
        "DIAGNOSED",
        "FIXED",
        "ESCALATED",
        "FAILED",
        "TIMED OUT",
        "REFUSED",
        "OPEN"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<width$} {:>6} {:>6.0}% {:>9} {:>6} {:>9} {:>6} {:>9} {:>8} {:>5}",
            r.rule,
            r.cases,
            r.success_rate() * 100.0,
            r.diagnosed,
            r.fixed,
            r.escalated,
            r.failed,
            r.timed_out,
            r.refused,
            r.open
        )?;
    }
    writeln!(
        out,
        "(HELPED: diagnosed or fixed, of the finished cases; TIMED OUT and REFUSED count runs)"
    )?;
    Ok(())
}

fn show(mor: &Path, json: bool) -> anyhow::Result<()> {
    let status = match ask(mor, Request::KbShow)? {
        Answer::KbShow(status) => status,
        other => bail!("unexpected answer from the top manager: {other:?}"),
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(());
    }
    let Some(rules) = &status.rules else {
        writeln!(out, "no rule set applied (`agad kb apply <dir>`)")?;
        return Ok(());
    };
    writeln!(
        out,
        "rule set version {}: {} rule(s), {} schedule(s), {} group(s) in {}",
        rules.version,
        rules.rules,
        rules.schedules,
        rules.groups,
        rules.files.join(", ")
    )?;
    if !rules.specialists.is_empty() {
        writeln!(out, "specialists: {}", rules.specialists.join(", "))?;
    }
    if !rules.modules.is_empty() {
        writeln!(
            out,
            "modules started or stopped: {}",
            rules.modules.join(", ")
        )?;
    }
    for d in &status.domains {
        let replica = match (d.replica_sent, d.replica_acked, &d.parent) {
            (_, Some(a), _) => format!("replica v{a} acknowledged"),
            (Some(s), None, _) => format!("replica v{s} sent, not acknowledged"),
            (None, None, Some(parent)) => format!("replica inside {parent}'s"),
            (None, None, None) => "no replica".to_owned(),
        };
        let holds = if d.holds_rules {
            "holds this rule set"
        } else {
            "NOT YET"
        };
        writeln!(out, "domain {}: {holds} ({replica})", d.domain)?;
    }
    Ok(())
}

fn catalog(arg: &CatalogArg) -> anyhow::Result<Catalog> {
    let mut catalog = match &arg.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).map_err(|e| {
                let source = agad_protocol::source::Source::new(&path.to_string_lossy(), &text)
                    .toml_error(&e);
                anyhow::anyhow!("{source}")
            })?
        }
        None => {
            eprintln!(
                "note: no --catalog: only the built-in inspectors and the runtime's own alarms are known (no specialist)"
            );
            Catalog::default()
        }
    };
    // What the runtime raises itself, and the built-in inspectors and probes with
    // the keys and metrics their manifests declare (a catalog file's own
    // entry for one of them keeps its configuration keys).
    let runtime = Catalog::with_runtime();
    catalog.keys.extend(runtime.keys);
    catalog.metrics.extend(runtime.metrics);
    for builtin in agad_modules::INSPECTORS.iter().chain(agad_modules::PROBES) {
        let spec = ManifestSpec::from_toml(builtin.manifest_toml)
            .map_err(|e| anyhow::anyhow!("built-in {}: {e}", builtin.name))?;
        let config = catalog
            .modules
            .get(builtin.name)
            .cloned()
            .unwrap_or_else(|| spec.config_keys());
        catalog.add_module(builtin.name, spec.kind, config, &spec.emitted());
    }
    Ok(catalog)
}

fn load(dir: &Path, arg: &CatalogArg) -> anyhow::Result<KnowledgeBase> {
    let catalog = catalog(arg)?;
    match KnowledgeBase::load_dir(dir, &catalog) {
        Ok(kb) => Ok(kb),
        Err(KbError::Invalid(errors)) => {
            let mut err = std::io::stderr().lock();
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            bail!(
                "{} error(s); the rule set is refused as a whole",
                errors.len()
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// An alarm as an operator writes it for a test: what is missing takes a
/// neutral value.
fn alarm_from(value: serde_json::Value, n: usize) -> anyhow::Result<Alarm> {
    let mut full = serde_json::json!({
        "id": "",
        "node": "",
        "module": "",
        "provenance": { "version": "", "sequence": 0, "sha256": "" },
        "area": "fault",
        "key": "",
        "metric": "",
        "subject": "",
        "severity": "major",
        "raised": true,
        "value": 0.0,
        "threshold": 0.0,
        "comparison": "above",
        "message": "",
        "time_ms": now_ms(),
    });
    let serde_json::Value::Object(given) = value else {
        bail!("alarm {n}: expected a JSON object");
    };
    if let serde_json::Value::Object(full) = &mut full {
        full.extend(given);
    }
    serde_json::from_value(full).with_context(|| format!("alarm {n}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_alarms(path: &Path) -> anyhow::Result<Vec<Alarm>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let values: Vec<serde_json::Value> = match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(one) => vec![one],
        // JSON lines, as `agad alarms --json` prints them.
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if values.is_empty() {
        bail!("{}: no alarm", path.display());
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| alarm_from(v, i + 1))
        .collect::<anyhow::Result<_>>()
        .with_context(|| path.display().to_string())
}

fn test(dir: &Path, alarms: &Path, at: Option<&str>, arg: &CatalogArg) -> anyhow::Result<()> {
    let kb = load(dir, arg)?;
    let alarms = read_alarms(alarms)?;
    let at = at
        .map(|t| {
            humantime::parse_rfc3339(t)
                .map_err(|e| anyhow::anyhow!("--at `{t}`: {e} (use e.g. 2026-12-01T08:00:00Z)"))
                .map(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                })
        })
        .transpose()?;
    // One state through the sequence: repetition and `after` see the
    // earlier alarms of the file.
    let mut state = State::default();
    let mut out = std::io::stdout().lock();
    for (i, alarm) in alarms.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let explanation = kb.explain(&mut state, alarm, at.unwrap_or(alarm.time_ms));
        write!(out, "{explanation}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use agad_knowledge_base::catalog::{RUNTIME_KEYS, RUNTIME_METRICS};

    /// The catalog's list of the runtime's own alarms follows the
    /// constants the runtime and the managers raise them with.
    #[test]
    fn the_runtime_keys_the_catalog_knows_are_the_ones_raised() {
        for key in [
            agad_runtime::integrity::TAMPERED_KEY,
            agad_runtime::crashloop::CRASH_LOOP_KEY,
            agad_runtime::refusals::REFUSED_KEY,
            agad_runtime::budget::NOTICE_KEY,
            agad_gerente_dominio::attest::ATTESTATION_FAILED_KEY,
            agad_gerente_mor::attest::ATTESTATION_FAILED_KEY,
        ] {
            assert!(RUNTIME_KEYS.contains(&key), "{key}");
        }
        for metric in [
            agad_runtime::refusals::REFUSED_METRIC,
            agad_runtime::budget::NOTICE_METRIC,
        ] {
            assert!(RUNTIME_METRICS.contains(&metric), "{metric}");
        }
    }
}
