//! The operator's interface to a running top manager: one JSON request and
//! one JSON answer per connection on a Unix socket in its data directory
//! (mode 0600: whoever can read the directory is the operator).

use crate::Mor;
use crate::bases::Published;
use crate::query::{self, AlarmList, AlarmQuery, ReportQuery, ReportRows, Status};
use agad_protocol::Bundle;
use agad_protocol::topology;
use agad_protocol::wire::Member;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Requests are small except bundles; this bounds what one client can make us hold.
const MAX_REQUEST: usize = 96 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// A signed bundle (`.agad` bytes, hex).
    Publish {
        bundle_hex: String,
    },
    /// A topology file's text; `file` names it in errors.
    TopologyApply {
        file: String,
        text: String,
        dry_run: bool,
    },
    TopologyShow,
    /// A knowledge-base rule set: every rules file of the operator's
    /// folder as (file name, text).
    KbApply {
        files: Vec<(String, String)>,
        dry_run: bool,
    },
    /// The rule set in force and which domains hold it.
    KbShow,
    EnrollList,
    EnrollApprove {
        fingerprint: String,
    },
    EnrollActivate {
        name: String,
    },
    EnrollTicket {
        name: String,
    },
    /// Forget a member or request: by name, fingerprint or unique prefix.
    EnrollRemove {
        who: String,
    },
    /// Unused tickets, by name.
    EnrollTickets,
    /// Cancel unused tickets: a name's, or the one a prefix names.
    EnrollRevoke {
        who: String,
    },
    Status,
    Reports(ReportQuery),
    Alarms(AlarmQuery),
    /// How often each knowledge-base rule acted and how it went.
    KbStats,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Published {
        module: String,
        version: String,
        sequence: u64,
        outcome: Published,
    },
    TopologyDiff {
        changes: Vec<String>,
        applied: bool,
        version: Option<u64>,
    },
    Topology {
        text: String,
        version: u64,
    },
    /// What a rule set changes (`+ rule x`, `~ group y`, ...); `applied`
    /// with the version it was stored as.
    KbDiff {
        changes: Vec<String>,
        applied: bool,
        version: Option<u64>,
    },
    /// A rule set refused whole: every error, nothing stored.
    KbInvalid {
        errors: Vec<RuleError>,
    },
    KbShow(KbStatus),
    Members(Vec<Member>),
    /// A member after a change.
    Member(Member),
    /// A member already in the state asked for: nothing changed.
    Unchanged(Member),
    /// A member or request forgotten.
    Removed(Member),
    /// Unused tickets as (name, ticket): listed, or cancelled.
    Tickets(Vec<(String, String)>),
    Revoked(Vec<(String, String)>),
    Ticket {
        name: String,
        ticket: String,
    },
    Status(Status),
    Reports(ReportRows),
    Alarms(AlarmList),
    KbStats(Vec<query::RuleStats>),
    Error(String),
}

/// One error of a refused rule set, at its position in the file the
/// client named (the client puts its folder back in front).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

/// `agad kb show`: the rule set in force and, per domain, whether its
/// manager acknowledged a replica carrying it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KbStatus {
    /// `None`: no rule set was ever applied.
    pub rules: Option<RuleSetStatus>,
    pub domains: Vec<DomainRules>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleSetStatus {
    /// The bases version its apply made.
    pub version: u64,
    pub files: Vec<String>,
    pub rules: usize,
    pub schedules: usize,
    pub groups: usize,
    /// The specialists its rules run (replicated with it).
    pub specialists: Vec<String>,
    /// The resident modules its rules start or stop (replicated with it).
    pub modules: Vec<String>,
}

/// One domain's replica as far as the rules go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRules {
    pub domain: String,
    /// A sub-domain's replica travels inside its parent's: the parent's
    /// acknowledgement covers it.
    pub parent: Option<String>,
    pub replica_sent: Option<u64>,
    pub replica_acked: Option<u64>,
    /// The acknowledged replica carries the rule set in force.
    pub holds_rules: bool,
}

/// Binds the socket now (so a second manager on the same directory fails
/// at start) and returns the serving future.
pub fn serve(
    mor: Arc<Mor>,
    path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    if path.exists() {
        // A stale socket from a killed manager; a live one would still answer.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!("another top manager is running on {}", path.display());
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => { tracing::warn!("admin accept failed: {e}"); continue; }
                },
                _ = shutdown.changed() => return,
            };
            let mor = mor.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(&mor, stream).await {
                    tracing::warn!("admin request failed: {e}");
                }
            });
        }
    })
}

async fn answer(mor: &Arc<Mor>, stream: UnixStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let mor = mor.clone();
            // Bases are synchronous (sled); keep them off the reactor.
            tokio::task::spawn_blocking(move || handle(&mor, request))
                .await
                .unwrap_or_else(|e| Answer::Error(format!("request failed: {e}")))
        }
        Err(e) => Answer::Error(format!("malformed request: {e}")),
    };
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// One request, as the admin socket and the web port's writes run it.
pub(crate) fn handle(mor: &Mor, request: Request) -> Answer {
    match try_handle(mor, request) {
        Ok(a) => a,
        Err(e) => Answer::Error(format!("{e:#}")),
    }
}

fn try_handle(mor: &Mor, request: Request) -> anyhow::Result<Answer> {
    let b = &mor.bases;
    Ok(match request {
        Request::Publish { bundle_hex } => {
            let bytes = hex::decode(bundle_hex.trim())?;
            let bundle = Bundle::from_bytes(&bytes)?;
            // Nothing half-applied: a module the rules in force could no
            // longer run (an argument they pass is gone) is refused whole.
            let broken = b.rules_errors_if_published(&bundle)?;
            if !broken.is_empty() {
                let errors: Vec<String> = broken.iter().take(10).map(ToString::to_string).collect();
                return Err(crate::bases::BaseError::Refused(format!(
                    "publishing `{}` sequence {} would break the rule set in force ({} error(s)); change the rules with `agad kb apply` first:\n{}",
                    bundle.manifest.name,
                    bundle.manifest.sequence,
                    broken.len(),
                    errors.join("\n")
                ))
                .into());
            }
            let outcome = b.publish(&bundle, &mor.trusted, crate::now_secs())?;
            mor.reconcile();
            Answer::Published {
                module: bundle.manifest.name.clone(),
                version: bundle.manifest.version.to_string(),
                sequence: bundle.manifest.sequence,
                outcome,
            }
        }
        Request::TopologyApply {
            file,
            text,
            dry_run,
        } => {
            let published = b.bundles()?;
            // Each assignment's config is checked against the manifest of
            // the module as published (BGC holds one version per name).
            let config_of = |name: &str| {
                published
                    .iter()
                    .find(|x| x.manifest.name == name)
                    .map(|x| x.manifest.config.as_slice())
            };
            let new = topology::parse(&text, &file, &config_of)?;
            let mut changes: Vec<String> = b
                .topology()?
                .diff(&new)
                .iter()
                .map(|c| c.to_string())
                .collect();
            // The topology is applied all the same (it is what exists);
            // the operator is told the rules need a new `kb apply`.
            let broken = b.rules_errors_under(&new)?;
            if broken > 0 && !changes.is_empty() {
                changes.push(format!(
                    "! the rule set in force gets {broken} error(s) under this topology (a node or domain it names is gone): fix it and `agad kb apply` it"
                ));
            }
            if dry_run || changes.is_empty() {
                Answer::TopologyDiff {
                    changes,
                    applied: false,
                    version: None,
                }
            } else {
                let version = b.apply_topology(&new)?;
                mor.reconcile();
                Answer::TopologyDiff {
                    changes,
                    applied: true,
                    version: Some(version),
                }
            }
        }
        Request::TopologyShow => Answer::Topology {
            text: b.topology()?.to_toml(),
            version: b.version()?,
        },
        Request::KbApply { files, dry_run } => kb_apply(mor, files, dry_run)?,
        Request::KbShow => Answer::KbShow(kb_show(mor)?),
        Request::EnrollList => Answer::Members(b.members()?),
        Request::EnrollApprove { fingerprint } => match b.approve(&fingerprint)? {
            (m, true) => {
                mor.reconcile();
                Answer::Member(m)
            }
            (m, false) => Answer::Unchanged(m),
        },
        Request::EnrollActivate { name } => match b.activate(&name)? {
            (m, true) => {
                mor.reconcile();
                Answer::Member(m)
            }
            (m, false) => Answer::Unchanged(m),
        },
        Request::EnrollRemove { who } => {
            let m = b.remove_member(&who)?;
            mor.reconcile();
            Answer::Removed(m)
        }
        Request::EnrollTickets => Answer::Tickets(b.tickets()?),
        Request::EnrollRevoke { who } => Answer::Revoked(b.revoke(&who)?),
        Request::EnrollTicket { name } => Answer::Ticket {
            ticket: b.ticket(&name)?,
            name,
        },
        Request::Status => Answer::Status(query::status(mor)?),
        Request::Reports(q) => Answer::Reports(query::reports(b, &q)?),
        Request::Alarms(q) => Answer::Alarms(query::alarms(mor, &q)?),
        Request::KbStats => Answer::KbStats(query::kb_stats(&mor.bases)?),
    })
}

/// Checks a rule set against what this deployment can run, tells what it
/// changes and, unless `dry_run` or nothing changes, stores it; the next
/// reconcile replicates it to every domain.
fn kb_apply(mor: &Mor, files: Vec<(String, String)>, dry_run: bool) -> anyhow::Result<Answer> {
    use agad_knowledge_base::KnowledgeBase;
    let b = &mor.bases;
    let new = match b.check_rules(&files)? {
        Ok(kb) => kb,
        Err(errors) => {
            tracing::info!(errors = errors.len(), "rule set refused");
            return Ok(Answer::KbInvalid {
                errors: errors
                    .into_iter()
                    .map(|e| RuleError {
                        file: e.file,
                        line: e.line,
                        column: e.column,
                        reason: e.reason,
                    })
                    .collect(),
            });
        }
    };
    let stored = b.rules()?;
    let mut changes = Vec::new();
    let old = match &stored {
        Some(set) => match b.check_rules(&set.files)? {
            Ok(kb) => kb,
            Err(errors) => {
                // What BGC or BTPG no longer have (a node removed, say):
                // the stored set is compared as if empty, and says so.
                changes.push(format!(
                    "(the stored rule set has {} error(s) against the bases now; compared as if empty)",
                    errors.len()
                ));
                KnowledgeBase::empty()
            }
        },
        None => KnowledgeBase::empty(),
    };
    let diff = old.diff(&new);
    changes.extend(
        diff.to_string()
            .lines()
            .map(str::to_owned)
            .filter(|l| l != "no change"),
    );
    let mut sorted = files.clone();
    sorted.sort();
    let same_text = stored.as_ref().is_some_and(|s| s.files == sorted);
    if diff.is_empty() && !same_text && stored.is_some() {
        changes.push("~ text only (comments, layout or file names): no rule changes".to_owned());
    }
    if dry_run || same_text {
        return Ok(Answer::KbDiff {
            changes,
            applied: false,
            version: None,
        });
    }
    let version = b.apply_rules(&files, &new)?;
    tracing::info!(
        version,
        rules = new.rules().len(),
        "rule set applied: {}",
        diff.to_string().trim_end().replace('\n', "; ")
    );
    mor.reconcile();
    Ok(Answer::KbDiff {
        changes,
        applied: true,
        version: Some(version),
    })
}

fn kb_show(mor: &Mor) -> anyhow::Result<KbStatus> {
    let set = mor.bases.rules()?;
    let domains = mor.domain_status();
    let acked = |domain: &str| {
        domains
            .iter()
            .find(|d| d.domain == domain)
            .and_then(|d| d.replica_acked)
    };
    // A sub-domain holds what the top-level domain above it acknowledged.
    let top_acked = |d: &crate::stations::DomainStatus| {
        let mut current = d.clone();
        for _ in 0..domains.len() {
            match &current.parent {
                Some(parent) => match domains.iter().find(|x| &x.domain == parent) {
                    Some(p) => current = p.clone(),
                    None => return None,
                },
                None => return acked(&current.domain),
            }
        }
        None
    };
    Ok(KbStatus {
        domains: domains
            .iter()
            .map(|d| DomainRules {
                domain: d.domain.clone(),
                parent: d.parent.clone(),
                replica_sent: d.replica_sent,
                replica_acked: d.replica_acked,
                holds_rules: match (&set, top_acked(d)) {
                    (Some(set), Some(acked)) => acked >= set.version,
                    _ => false,
                },
            })
            .collect(),
        rules: set.map(|s| RuleSetStatus {
            version: s.version,
            files: s.files.into_iter().map(|(name, _)| name).collect(),
            rules: s.rules,
            schedules: s.schedules,
            groups: s.groups,
            specialists: s.specialists,
            modules: s.modules,
        }),
    })
}

/// Sends one request to the top manager whose data directory is `data_dir`.
pub async fn request(data_dir: &Path, request: &Request) -> anyhow::Result<Answer> {
    let path = crate::admin_socket(data_dir);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the top manager at {} ({e}); is `agad mor` running with --data-dir {}?",
            path.display(),
            data_dir.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    Ok(serde_json::from_str(&answer)?)
}
