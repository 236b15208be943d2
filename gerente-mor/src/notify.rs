//! Webhooks: every alarm BIG stores (raise and clear) and every case the
//! knowledge base escalates, sent to the incident tools operators already
//! run, in Alertmanager's webhook format (`version` 4), so anything that
//! takes Alertmanager's webhooks takes AGAD's.
//!
//! Durable and in order: an event is written to the `notify-events` tree
//! (and flushed) right after BIG stores what it is about — a `kill -9` in
//! between loses that notification, never the alarm; each receiver has a cursor on disk and
//! moves it past an event only once the receiver answered 2xx (or the
//! event is filtered out for it, or older than [`MAX_AGE`]). A receiver
//! that is down is retried with a doubling back-off up to a minute, and a
//! restart of the top manager resumes where each cursor stood. The queue
//! is bounded ([`MAX_EVENTS`]): past it the oldest event is dropped, with a
//! log line, rather than the manager's disk filling up.
//!
//! Receivers come from a TOML file (`agad mor --webhooks FILE`):
//!
//! ```toml
//! [[webhook]]
//! name = "oncall"                          # unique; keys the cursor
//! url = "http://127.0.0.1:9095/alerts"     # http or https
//! min_severity = "major"                   # default "warning"
//! domains = ["lab"]                        # default: every domain
//! send_resolved = true                     # clears too (default true)
//! timeout = "10s"                          # per request (default 10s)
//! ```

use agad_protocol::message::{Alarm, Severity};
use agad_protocol::run::{Case, CaseState};
use agad_protocol::source::{Source, SourceError};
use agad_protocol::wire;
use agad_storage::{Database, StorageError, Tree};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};

/// Events kept for receivers that are behind; the oldest go past this.
pub const MAX_EVENTS: usize = 100_000;
/// An event a receiver could not take for this long is given up on.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Longest wait between two attempts at a receiver that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One webhook receiver, as the operator's file gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub url: String,
    pub min_severity: Severity,
    /// Empty: every domain.
    pub domains: Vec<String>,
    pub send_resolved: bool,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    webhook: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: toml::Spanned<String>,
    url: toml::Spanned<String>,
    #[serde(default = "warning")]
    min_severity: Severity,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default = "yes")]
    send_resolved: bool,
    timeout: Option<toml::Spanned<String>>,
}

fn warning() -> Severity {
    Severity::Warning
}

fn yes() -> bool {
    true
}

/// Reads the receivers of `path`: every error as `file:line:column: reason`.
pub fn load(path: &Path) -> Result<Vec<Receiver>, Vec<SourceError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![SourceError {
            file: file.clone(),
            line: 1,
            column: 1,
            reason: format!("cannot read: {e}"),
        }]
    })?;
    parse(&file, &text)
}

/// [`load`] of `text`, named `file` in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<Receiver>, Vec<SourceError>> {
    let source = Source::new(file, text);
    let parsed: File = toml::from_str(text).map_err(|e| vec![source.toml_error(&e)])?;
    let mut errors = Vec::new();
    let mut receivers: Vec<Receiver> = Vec::new();
    for entry in parsed.webhook {
        let name = entry.name.get_ref();
        if !agad_protocol::text::is_name(name) {
            errors.push(source.error(
                entry.name.span(),
                format!("name `{name}`: expected letters, digits, `-`, `_` or `.`"),
            ));
        } else if receivers.iter().any(|r| r.name == *name) {
            errors.push(source.error(entry.name.span(), format!("a second webhook `{name}`")));
        }
        let url = entry.url.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            errors.push(source.error(
                entry.url.span(),
                format!("url `{url}`: expected an http:// or https:// address"),
            ));
        }
        let timeout = match &entry.timeout {
            None => Duration::from_secs(10),
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(60) => d,
                _ => {
                    errors.push(source.error(
                        t.span(),
                        format!(
                            "timeout `{}`: expected a duration from 1ms to 60s",
                            t.get_ref()
                        ),
                    ));
                    Duration::ZERO
                }
            },
        };
        receivers.push(Receiver {
            name: name.clone(),
            url: url.clone(),
            min_severity: entry.min_severity,
            domains: entry.domains,
            send_resolved: entry.send_resolved,
            timeout,
        });
    }
    if errors.is_empty() {
        Ok(receivers)
    } else {
        Err(errors)
    }
}

/// What is notified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// An alarm BIG stored (a raise or a clear), with its node's domain.
    Alarm { alarm: Alarm, domain: String },
    /// A case the knowledge base escalated to a person.
    Escalated { case: Case, domain: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    queued_ms: u64,
    event: Event,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

impl Receiver {
    /// Whether this receiver wants `event`.
    pub fn wants(&self, event: &Event) -> bool {
        let (domain, severity, resolved) = match event {
            Event::Alarm { alarm, domain } => (domain, alarm.severity, !alarm.raised),
            // Escalations are for people: whatever the severity.
            Event::Escalated { domain, .. } => (domain, Severity::Critical, false),
        };
        (self.domains.is_empty() || self.domains.contains(domain))
            && severity >= self.min_severity
            && (self.send_resolved || !resolved)
    }

    /// The body Alertmanager would POST for `event`: one alert, grouped by
    /// its own labels.
    pub fn payload(&self, event: &Event) -> Value {
        let (status, labels, annotations, starts, ends) = match event {
            Event::Alarm { alarm, domain } => {
                let status = if alarm.raised { "firing" } else { "resolved" };
                let labels = json!({
                    "alertname": alarm.key,
                    "domain": domain,
                    "node": alarm.node,
                    "module": alarm.module,
                    "area": label(&alarm.area),
                    "severity": label(&alarm.severity),
                    "metric": alarm.metric,
                    "subject": alarm.subject,
                });
                let annotations = json!({
                    "summary": alarm.message,
                    "value": alarm.value.to_string(),
                    "threshold": alarm.threshold.to_string(),
                    "alarm_id": alarm.id,
                });
                let at = rfc3339(alarm.time_ms);
                let ends = if alarm.raised {
                    "0001-01-01T00:00:00Z".to_owned()
                } else {
                    at.clone()
                };
                (status, labels, annotations, at, ends)
            }
            Event::Escalated { case, domain } => {
                let (to, reason) = match &case.state {
                    CaseState::Escalated { to, reason } => (to.as_str(), reason.as_str()),
                    _ => ("", ""),
                };
                let labels = json!({
                    "alertname": "agad.escalated",
                    "domain": domain,
                    "node": case.node,
                    "rule": case.rule,
                    "key": case.key,
                    "severity": "critical",
                    "escalated_to": to,
                });
                let annotations = json!({
                    "summary": format!("rule `{}` escalated to {to}: {reason}", case.rule),
                    "alarm_id": case.alarm_id,
                    "latest_result": case.latest().unwrap_or_default(),
                });
                let at = rfc3339(case.updated_ms);
                (
                    "firing",
                    labels,
                    annotations,
                    at,
                    "0001-01-01T00:00:00Z".to_owned(),
                )
            }
        };
        let fingerprint = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(labels.to_string().as_bytes());
            hex::encode(&digest[..8])
        };
        json!({
            "version": "4",
            "groupKey": format!("{{}}:{labels}"),
            "truncatedAlerts": 0,
            "status": status,
            "receiver": self.name,
            "groupLabels": labels,
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": "",
            "alerts": [{
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts,
                "endsAt": ends,
                "generatorURL": "",
                "fingerprint": fingerprint,
            }],
        })
    }
}

/// The queue of events and the receivers' cursors.
pub struct Notifier {
    receivers: Vec<Receiver>,
    db: Database,
    /// Sequence number (big-endian) → [`Queued`].
    events: Tree,
    /// Receiver name → the sequence number of the last event it is past;
    /// [`LAST`] → the last sequence number given.
    cursors: Tree,
    /// Held while a sequence number is given and its event written.
    pushing: std::sync::Mutex<()>,
    wake: Notify,
}

/// Key of the last sequence number given (no receiver's name starts with
/// a NUL byte).
const LAST: &[u8] = b"\0last";

impl Notifier {
    /// Opens the queue for `receivers`; a receiver new to it starts after
    /// the events already queued (it gets what happens from now on).
    pub fn open(db: &Database, receivers: Vec<Receiver>) -> Result<Notifier, StorageError> {
        let notifier = Notifier {
            receivers,
            db: db.clone(),
            events: db.tree("notify-events")?,
            cursors: db.tree("notify-cursors")?,
            pushing: std::sync::Mutex::new(()),
            wake: Notify::new(),
        };
        let last = notifier.last_seq()?;
        for r in &notifier.receivers {
            if notifier.cursors.get(r.name.as_bytes())?.is_none() {
                notifier
                    .cursors
                    .insert(r.name.as_bytes(), &last.to_be_bytes())?;
            }
        }
        db.flush()?;
        Ok(notifier)
    }

    /// Whether any receiver is configured (else nothing is queued).
    pub fn is_active(&self) -> bool {
        !self.receivers.is_empty()
    }

    fn last_seq(&self) -> Result<u64, StorageError> {
        self.number(LAST)
    }

    fn cursor(&self, name: &str) -> Result<u64, StorageError> {
        self.number(name.as_bytes())
    }

    fn number(&self, key: &[u8]) -> Result<u64, StorageError> {
        Ok(self
            .cursors
            .get(key)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Queues `event` for every receiver (durably: flushed before this
    /// returns). Blocking.
    pub fn push(&self, event: Event) -> Result<(), StorageError> {
        if self.receivers.is_empty() {
            return Ok(());
        }
        let queued = Queued {
            queued_ms: now_ms(),
            event,
        };
        {
            let _pushing = self.pushing.lock().unwrap_or_else(|p| p.into_inner());
            let seq = self.last_seq()? + 1;
            self.events
                .insert(&seq.to_be_bytes(), &wire::encode_value(&queued))?;
            self.cursors.insert(LAST, &seq.to_be_bytes())?;
            if self.events.len() > MAX_EVENTS {
                for (oldest, _) in self.events.entries_after(b"", 1)? {
                    self.events.remove(&oldest)?;
                    tracing::warn!(
                        "{MAX_EVENTS} webhook events are waiting: the oldest was dropped"
                    );
                }
            }
        }
        self.db.flush()?;
        self.wake.notify_waiters();
        Ok(())
    }

    /// The next event after `cursor`, with its sequence number (`None`
    /// for an entry that does not decode: skipped, never retried).
    fn next(&self, cursor: u64) -> Result<Option<(u64, Option<Queued>)>, StorageError> {
        let after = self.events.entries_after(&cursor.to_be_bytes(), 1)?;
        Ok(after.into_iter().next().and_then(|(key, value)| {
            let seq = u64::from_be_bytes(<[u8; 8]>::try_from(key.as_slice()).ok()?);
            Some((seq, wire::decode_value(&value).ok()))
        }))
    }

    fn advance(&self, name: &str, seq: u64) -> Result<(), StorageError> {
        self.cursors.insert(name.as_bytes(), &seq.to_be_bytes())?;
        // Events every receiver is past go.
        let slowest = self
            .receivers
            .iter()
            .map(|r| self.cursor(&r.name))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min()
            .unwrap_or(seq);
        for (key, _) in self.events.entries_after(b"", 64)? {
            match <[u8; 8]>::try_from(key.as_slice()) {
                Ok(b) if u64::from_be_bytes(b) <= slowest => self.events.remove(&key)?,
                _ => break,
            }
        }
        self.db.flush()
    }

    /// Delivers to every receiver until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let tasks: Vec<_> = (0..self.receivers.len())
            .map(|i| tokio::spawn(self.clone().deliver(i, shutdown.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// One attempt at `event`; whether the receiver took it (2xx).
    async fn post(
        &self,
        agent: &ureq::Agent,
        receiver: &Receiver,
        seq: u64,
        event: &Event,
        backoff: Duration,
    ) -> bool {
        let body = receiver.payload(event).to_string();
        let (agent, url) = (agent.clone(), receiver.url.clone());
        let answer = tokio::task::spawn_blocking(move || {
            agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .map(|r| r.status().as_u16())
        })
        .await;
        match answer {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                tracing::info!(webhook = %receiver.name, seq, status, "webhook delivered");
                true
            }
            Ok(Ok(status)) => {
                tracing::warn!(webhook = %receiver.name, seq, status, retry_in = ?backoff, "webhook refused");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(webhook = %receiver.name, seq, retry_in = ?backoff, "webhook not delivered: {e}");
                false
            }
            Err(_) => false,
        }
    }

    async fn deliver(self: Arc<Self>, index: usize, mut shutdown: watch::Receiver<bool>) {
        let receiver = self.receivers[index].clone();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(receiver.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut backoff = Duration::from_secs(1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let me = self.clone();
            let name = receiver.name.clone();
            let step = tokio::task::spawn_blocking(move || {
                let cursor = me.cursor(&name)?;
                me.next(cursor)
            })
            .await;
            let next = match step {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::error!(webhook = %receiver.name, "webhook queue unreadable: {e}");
                    None
                }
                Err(_) => None,
            };
            let Some((seq, queued)) = next else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            let delivered = match &queued {
                None => {
                    tracing::error!(webhook = %receiver.name, seq, "unreadable webhook event skipped");
                    true
                }
                Some(q) if !receiver.wants(&q.event) => true,
                Some(q) if now_ms().saturating_sub(q.queued_ms) > MAX_AGE.as_millis() as u64 => {
                    tracing::error!(webhook = %receiver.name, seq, "webhook event given up: not taken for {} h", MAX_AGE.as_secs() / 3600);
                    true
                }
                Some(q) => self.post(&agent, &receiver, seq, &q.event, backoff).await,
            };
            if delivered {
                backoff = Duration::from_secs(1);
                let me = self.clone();
                let name = receiver.name.clone();
                match tokio::task::spawn_blocking(move || me.advance(&name, seq)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(webhook = %receiver.name, "cannot record a delivery: {e}")
                    }
                    Err(_) => {}
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn alarm(raised: bool, severity: Severity) -> Alarm {
        Alarm {
            id: "n1/cpu-mem/7".into(),
            node: "n1".into(),
            module: "cpu-mem".into(),
            key: "cpu.total".into(),
            metric: "cpu.total-percent".into(),
            severity,
            raised,
            value: 97.0,
            threshold: 90.0,
            message: "CPU above 90%".into(),
            time_ms: 1_795_780_800_000,
            provenance: Default::default(),
            area: agad_protocol::Area::Performance,
            subject: String::new(),
            comparison: agad_protocol::message::Comparison::Above,
        }
    }

    #[test]
    fn the_file_is_checked_with_positions() {
        let ok = parse(
            "w.toml",
            "[[webhook]]\nname = \"oncall\"\nurl = \"http://127.0.0.1:9/a\"\nmin_severity = \"major\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(ok[0].min_severity, Severity::Major);
        assert_eq!(ok[0].timeout, Duration::from_secs(2));
        assert!(ok[0].send_resolved && ok[0].domains.is_empty());
        let errors = parse(
            "w.toml",
            "[[webhook]]\nname = \"a\"\nurl = \"ftp://x\"\n[[webhook]]\nname = \"a\"\nurl = \"http://x\"\ntimeout = \"forever\"\n",
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].starts_with("w.toml:3:7: url `ftp://x`"), "{text:?}");
        assert!(
            text[1].starts_with("w.toml:5:8: a second webhook"),
            "{text:?}"
        );
        assert!(text[2].starts_with("w.toml:7:11: timeout"), "{text:?}");
        let unknown = parse(
            "w.toml",
            "[[webhook]]\nname = \"a\"\nurl = \"http://x\"\nurls = 1\n",
        )
        .unwrap_err();
        assert_eq!(unknown[0].line, 4, "{unknown:?}");
    }

    #[test]
    fn alarms_become_alertmanager_alerts() {
        let r = parse("w", "[[webhook]]\nname = \"oncall\"\nurl = \"http://x\"\n").unwrap();
        let r = &r[0];
        let event = Event::Alarm {
            alarm: alarm(true, Severity::Major),
            domain: "lab".into(),
        };
        let body = r.payload(&event);
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["receiver"], "oncall");
        let alert = &body["alerts"][0];
        assert_eq!(alert["labels"]["alertname"], "cpu.total");
        assert_eq!(alert["labels"]["node"], "n1");
        assert_eq!(alert["labels"]["domain"], "lab");
        assert_eq!(alert["labels"]["severity"], "major");
        assert_eq!(alert["startsAt"], "2026-11-27T12:00:00.000Z");
        assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
        let clear = Event::Alarm {
            alarm: alarm(false, Severity::Major),
            domain: "lab".into(),
        };
        let body = r.payload(&clear);
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["alerts"][0]["endsAt"], "2026-11-27T12:00:00.000Z");
        // Same labels, same fingerprint: the tool pairs the clear with its raise.
        assert_eq!(
            body["alerts"][0]["fingerprint"],
            r.payload(&event)["alerts"][0]["fingerprint"]
        );
    }

    #[test]
    fn receivers_filter_by_severity_domain_and_resolved() {
        let r = parse(
            "w",
            "[[webhook]]\nname = \"a\"\nurl = \"http://x\"\nmin_severity = \"major\"\ndomains = [\"lab\"]\nsend_resolved = false\n",
        )
        .unwrap()
        .remove(0);
        let ev = |raised, severity, domain: &str| Event::Alarm {
            alarm: alarm(raised, severity),
            domain: domain.into(),
        };
        assert!(r.wants(&ev(true, Severity::Major, "lab")));
        assert!(!r.wants(&ev(true, Severity::Minor, "lab")));
        assert!(!r.wants(&ev(true, Severity::Critical, "campus")));
        assert!(!r.wants(&ev(false, Severity::Critical, "lab")));
    }

    #[test]
    fn the_queue_survives_a_restart_and_moves_per_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let receivers = parse(
            "w",
            "[[webhook]]\nname = \"a\"\nurl = \"http://x\"\n[[webhook]]\nname = \"b\"\nurl = \"http://y\"\n",
        )
        .unwrap();
        {
            let db = Database::open(dir.path()).unwrap();
            let n = Notifier::open(&db, receivers.clone()).unwrap();
            for _ in 0..3 {
                n.push(Event::Alarm {
                    alarm: alarm(true, Severity::Major),
                    domain: "lab".into(),
                })
                .unwrap();
            }
            let (seq, _) = n.next(n.cursor("a").unwrap()).unwrap().unwrap();
            assert_eq!(seq, 1);
            n.advance("a", 1).unwrap();
        }
        let db = Database::open(dir.path()).unwrap();
        let n = Notifier::open(&db, receivers).unwrap();
        assert_eq!(n.next(n.cursor("a").unwrap()).unwrap().unwrap().0, 2);
        // b has taken nothing yet: event 1 is still there for it.
        assert_eq!(n.next(n.cursor("b").unwrap()).unwrap().unwrap().0, 1);
        n.advance("b", 3).unwrap();
        n.advance("a", 3).unwrap();
        assert!(n.next(3).unwrap().is_none());
        assert_eq!(n.events.len(), 0, "events every receiver is past are gone");
    }
}
