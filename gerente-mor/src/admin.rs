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
    Members(Vec<Member>),
    Member(Member),
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

fn handle(mor: &Mor, request: Request) -> Answer {
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
            let changes: Vec<String> = b
                .topology()?
                .diff(&new)
                .iter()
                .map(|c| c.to_string())
                .collect();
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
        Request::EnrollList => Answer::Members(b.members()?),
        Request::EnrollApprove { fingerprint } => {
            let m = b.approve(&fingerprint)?;
            mor.reconcile();
            Answer::Member(m)
        }
        Request::EnrollActivate { name } => {
            let m = b.activate(&name)?;
            mor.reconcile();
            Answer::Member(m)
        }
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
