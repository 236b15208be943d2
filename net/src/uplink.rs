//! The link from an element to its parent manager: connect (to the first of
//! several addresses that answers), say hello, then keep the parent informed —
//! the outbox drained alarms first, keep-alives on a period, control answers —
//! and hand down whatever the parent commands. Alarms go at once; reports
//! are gathered for a moment so that a window's reports leave in one
//! record, and whatever waits rides along with what goes. A keep-alive goes
//! only when nothing else was sent for a whole interval, and the parent
//! answers one only when it wrote nothing else for a while
//! ([`PARENT_EVERY`]), so a quiet link costs the child's keep-alive and the
//! TCP acknowledgement of it. Reconnects with back-off and jitter; on every
//! new connection the unacknowledged outbox is replayed in order, once.

use crate::conn::{self, FrameWriter, sleep_until_some, spawn_reader};
use crate::liveness::{Detector, LivenessConfig, OwnLag, PARENT_EVERY};
use crate::outbox::{Class, Outbox};
use crate::tls::PeerIdentity;
use agad_protocol::text::excerpt;
use agad_protocol::wire::{
    Activation, ComponentStatus, Control, Enrollment, Message, Queued, Role, Sender,
};
use rand::Rng;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, watch};

/// Entries sent per outbox read; alarms are looked at again between batches.
const BATCH: usize = 64;
/// Longest that queued reports wait for the rest of their window's reports.
const GATHER_MAX: Duration = Duration::from_secs(1);
/// Most parent addresses a redirect may carry.
pub const MAX_PARENTS: usize = 16;

#[derive(Clone)]
pub struct UplinkConfig {
    /// Parent addresses in priority order (primary first, standbys after).
    pub parents: Vec<String>,
    pub tls: Arc<ClientConfig>,
    pub role: Role,
    /// A one-time enrollment ticket, presented in every hello until accepted.
    pub ticket: Option<String>,
    pub keepalive: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl std::fmt::Debug for UplinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkConfig")
            .field("parents", &self.parents)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What the element learns from its link.
#[derive(Debug, Clone)]
pub enum Downlink {
    Connected {
        parent: PeerIdentity,
        address: String,
    },
    /// The parent refused or parked this element (enrollment not finished).
    NotAdmitted {
        enrollment: Enrollment,
        reason: String,
    },
    Control(Control),
    Disconnected {
        reason: String,
    },
    /// The parent sent this element to another domain's stations: the link
    /// now connects to `parents` (the element should remember them).
    Redirected {
        domain: String,
        parents: Vec<String>,
    },
}

/// Everything the element supplies to its link.
pub trait Element: Send + Sync + 'static {
    /// Hashes (hex) of module bundles this element already stores.
    fn modules_held(&self) -> Vec<String>;
    /// Status of each component, sent with every keep-alive.
    fn components(&self) -> Vec<ComponentStatus>;
    /// A station: the domain of the replica it holds (said in the hello).
    fn serving(&self) -> Option<String> {
        None
    }
    /// A station: where its own children reach it (said in the hello).
    fn advertise(&self) -> Vec<String> {
        Vec::new()
    }
    /// A station: the generation of its activation for the domain it
    /// serves (said in the hello; 0 for none).
    fn generation(&self) -> u64 {
        0
    }
    /// Fencing: whether to stay with a parent that welcomed this element
    /// under `activation`. An element that saw a newer activation of that
    /// domain refuses an older one (a manager that came back after its
    /// domain moved on); one that accepts remembers it. Called before the
    /// element sends anything beyond its hello.
    fn accept_parent(&self, activation: Option<&Activation>) -> Result<(), String> {
        let _ = activation;
        Ok(())
    }
}

/// Runs the link until `shutdown`. `commands` are control frames the element
/// sends up (answers, enrollment requests); those issued while disconnected
/// wait for the next connection.
pub async fn run(
    config: UplinkConfig,
    outbox: Outbox,
    element: Arc<dyn Element>,
    events: mpsc::Sender<Downlink>,
    mut commands: mpsc::Receiver<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = config.backoff_initial;
    let mut next = 0usize;
    // A redirect replaces them for the rest of the run.
    let mut parents = config.parents.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let address = parents[next % parents.len()].clone();
        next += 1;
        let mut welcomed = false;
        let outcome = tokio::select! {
            r = session(&config, &address, &outbox, &*element, &events, &mut commands, &mut welcomed) => r,
            _ = shutdown.changed() => return,
        };
        // A link that was up and broke (its manager died, a fail-over) is
        // redialled at the next address after the initial back-off, not
        // after the one that failed attempts before it had grown to.
        if welcomed {
            backoff = config.backoff_initial;
        }
        match outcome {
            Ok(Session::Admitted) => {
                backoff = config.backoff_initial;
                next -= 1; // the same parent first again
            }
            Ok(Session::NotAdmitted) => {}
            Ok(Session::Redirected {
                domain,
                parents: to,
            }) => {
                tracing::info!(parent = %address, %domain, parents = ?to, "redirected to another domain's stations");
                parents = to.clone();
                next = 0;
                backoff = config.backoff_initial;
                let _ = events
                    .send(Downlink::Redirected {
                        domain,
                        parents: to,
                    })
                    .await;
                continue;
            }
            Err(reason) => {
                tracing::info!(parent = %address, "link down: {reason}");
                let _ = events.send(Downlink::Disconnected { reason }).await;
            }
        }
        // Jitter spreads the reconnections of many elements after a
        // manager restart.
        let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
        backoff = (backoff * 2).min(config.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

enum Session {
    /// Was admitted and served until the link broke cleanly.
    Admitted,
    NotAdmitted,
    /// Sent to another domain's stations (a non-empty list).
    Redirected {
        domain: String,
        parents: Vec<String>,
    },
}

/// The parent's redirect, if it is one the element can follow: at most
/// [`MAX_PARENTS`] addresses, each short and printable (they are logged and
/// stored).
fn redirect(domain: String, parents: Vec<String>) -> Result<Session, String> {
    let usable = !parents.is_empty()
        && parents.len() <= MAX_PARENTS
        && parents
            .iter()
            .all(|p| p.len() <= 255 && p.bytes().all(|b| b.is_ascii_graphic()))
        && agad_protocol::text::is_name(&domain);
    if usable {
        Ok(Session::Redirected { domain, parents })
    } else {
        Err(format!(
            "the parent sent an unusable redirect ({} addresses)",
            parents.len()
        ))
    }
}

async fn session(
    config: &UplinkConfig,
    address: &str,
    outbox: &Outbox,
    element: &dyn Element,
    events: &mpsc::Sender<Downlink>,
    commands: &mut mpsc::Receiver<Control>,
    welcomed: &mut bool,
) -> Result<Session, String> {
    let connected = conn::connect(address, config.tls.clone())
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    // A parent whose host is gone or cut off is found by the next frame
    // that goes unacknowledged, without its answering every keep-alive.
    if let Err(e) = connected
        .send_queue
        .give_up_unacknowledged_after(unacknowledged_for(config.keepalive))
    {
        tracing::debug!("cannot bound unacknowledged data on the parent link: {e}");
    }
    let (peer, mut reader, mut writer) = (connected.peer, connected.reader, connected.writer);
    reader.set_sender(Sender::Parent);
    // Checked before a single frame goes out: any certificate of the CA
    // could otherwise pose as our parent, acknowledge (and so delete) our
    // queued alarms or deploy an empty set.
    if !config.role.parent_roles().contains(&peer.role) {
        return Err(format!(
            "{address} presented a `{}` certificate (`{}`); a {} accepts only {} as its parent",
            peer.role,
            peer.name,
            config.role,
            config
                .role
                .parent_roles()
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    writer
        .send(&Message::Control(Control::Hello {
            role: config.role,
            software: concat!("agad ", env!("CARGO_PKG_VERSION")).to_owned(),
            ticket: config.ticket.clone(),
            modules_held: element.modules_held(),
            keepalive_ms: config.keepalive.as_millis() as u64,
            serving: element.serving(),
            advertise: element.advertise(),
            generation: element.generation(),
        }))
        .await
        .map_err(|e| e.to_string())?;
    let mut incoming = spawn_reader(reader);
    match incoming.recv().await {
        Some(Ok(Message::Control(Control::Welcome {
            enrollment: Enrollment::Active,
            activation,
            ..
        }))) => element
            .accept_parent(activation.as_ref())
            .map_err(|reason| format!("{address} refused as a parent: {reason}"))?,
        Some(Ok(Message::Control(Control::Welcome {
            enrollment, reason, ..
        }))) => {
            // The parent's words: logged and passed on, but never unbounded.
            // The parent's words, short and printable: a rogue parent cannot
            // fill the log or forge lines.
            let reason = excerpt(&reason, 512);
            tracing::warn!(parent = %address, ?enrollment, "not admitted yet: {reason}");
            let _ = events
                .send(Downlink::NotAdmitted { enrollment, reason })
                .await;
            return Ok(Session::NotAdmitted);
        }
        Some(Ok(Message::Control(Control::Redirect { domain, parents }))) => {
            return redirect(domain, parents);
        }
        Some(Ok(other)) => {
            return Err(format!(
                "expected a welcome, got a `{}` frame",
                other.kind()
            ));
        }
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("closed before welcoming".into()),
    }
    *welcomed = true;
    tracing::info!(parent = %peer.name, %address, "link up");
    let _ = events
        .send(Downlink::Connected {
            parent: peer.clone(),
            address: address.to_owned(),
        })
        .await;
    let mut sent = Sent::default();
    // Keep-alives repeat the component list only when it changed: most of
    // a quiet node's traffic is keep-alives, so they must stay small.
    let mut last_components: Option<Vec<ComponentStatus>> = None;
    // A parent that stops writing or acknowledging (stopped process, stuck
    // disk) is left for the next address. It writes at least every
    // `PARENT_EVERY` intervals (answering a keep-alive when it had nothing
    // else to say), and acknowledges what we send within
    // `ACKNOWLEDGED_WITHIN` intervals; a gone host is the kernel's to find
    // (above), a closed process's the connection's.
    let liveness = LivenessConfig::new(config.keepalive * PARENT_EVERY);
    let mut parent_alive = Detector::new(liveness, Instant::now());
    let check_every = LivenessConfig::new(config.keepalive).check_every();
    let mut own_lag = OwnLag::new(config.keepalive * 3, check_every / 2);
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check_due = Instant::now();
    // Since when something the parent acknowledges (alarms, reports) went
    // without an acknowledgement coming back.
    let mut unacknowledged_since: Option<Instant> = None;
    // A keep-alive goes only when nothing was sent for a whole interval:
    // any frame proves this end alive just as well.
    let mut last_sent = tokio::time::Instant::now();
    // Frames that wait for the next keep-alive's slot and go in its place.
    let mut next_slot: Vec<Message> = Vec::new();
    // The component list is looked at every interval even while other
    // frames flow, so a change goes up within one interval.
    let mut status_check = tokio::time::interval(config.keepalive);
    status_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_check.reset();
    // Reports wait this long after the first of them is queued, so that a
    // window's reports (every module ends its window on the same tick)
    // leave in one record.
    let gather = (config.keepalive / 4).min(GATHER_MAX);
    let mut reports_due: Option<tokio::time::Instant> = None;
    // Everything unacknowledged goes at once on a new connection (the replay).
    if sent
        .drain(outbox, &mut writer, Drain::Everything, &mut next_slot)
        .await?
    {
        unacknowledged_since = Some(Instant::now());
    }
    loop {
        let keepalive_due = last_sent + config.keepalive;
        tokio::select! {
            frame = incoming.recv() => {
                if matches!(frame, Some(Ok(_))) {
                    parent_alive.heard(Instant::now());
                }
                match frame {
                Some(Ok(Message::Control(Control::KeepAlive { .. }))) => {}
                Some(Ok(Message::Control(Control::Ack { seqs }))) => {
                    outbox.ack(&seqs).map_err(|e| e.to_string())?;
                    unacknowledged_since = None;
                }
                Some(Ok(Message::Control(Control::Redirect { domain, parents }))) => {
                    return redirect(domain, parents);
                }
                Some(Ok(Message::Control(control))) => {
                    if events.send(Downlink::Control(control)).await.is_err() {
                        return Ok(Session::Admitted);
                    }
                }
                Some(Ok(other)) => return Err(format!("unexpected `{}` frame from parent", other.kind())),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("parent closed the connection".into()),
            }},
            _ = check.tick() => {
                let now = Instant::now();
                let lag = own_lag.tick(check_due, now);
                check_due = now + check_every;
                if parent_alive.is_stale(now, lag) {
                    return Err(format!(
                        "parent `{}` silent for {} ms",
                        peer.name,
                        now.saturating_duration_since(parent_alive.last_heard()).as_millis()
                    ));
                }
                if let Some(since) = unacknowledged_since
                    && now.saturating_duration_since(since) > config.keepalive * ACKNOWLEDGED_WITHIN + lag
                {
                    return Err(format!(
                        "parent `{}` silent: nothing acknowledged for {} ms",
                        peer.name,
                        now.saturating_duration_since(since).as_millis()
                    ));
                }
            }
            () = outbox.wait_queued() => {
                // Alarms at once (with whatever reports wait, in the same
                // record); reports alone after the gathering delay.
                if sent.drain(outbox, &mut writer, Drain::Urgent, &mut next_slot).await? {
                    last_sent = tokio::time::Instant::now();
                    unacknowledged_since.get_or_insert_with(Instant::now);
                    reports_due = None;
                } else if reports_due.is_none() && sent.reports_waiting(outbox)? {
                    reports_due = Some(tokio::time::Instant::now() + gather);
                }
            }
            () = sleep_until_some(reports_due) => {
                reports_due = None;
                if sent.drain(outbox, &mut writer, Drain::Everything, &mut next_slot).await? {
                    last_sent = tokio::time::Instant::now();
                    unacknowledged_since.get_or_insert_with(Instant::now);
                }
            }
            command = commands.recv() => match command {
                // An attestation answer has a whole attestation period to
                // arrive: it takes the next keep-alive's place instead of
                // costing a record (and its acknowledgement) of its own.
                Some(answer @ Control::Attestation(_)) if next_slot.len() < MAX_NEXT_SLOT => {
                    next_slot.push(Message::Control(answer));
                }
                Some(c) => {
                    writer.send(&Message::Control(c)).await.map_err(|e| e.to_string())?;
                    last_sent = tokio::time::Instant::now();
                }
                None => return Ok(Session::Admitted),
            },
            _ = status_check.tick() => {
                let components = element.components();
                if last_components.as_ref() != Some(&components) {
                    tracing::debug!(changed = ?changed_components(last_components.as_deref(), &components), "components changed");
                    let mut frames = std::mem::take(&mut next_slot);
                    frames.push(Message::Control(Control::KeepAlive { components: components.clone() }));
                    writer.send_all(&frames).await.map_err(|e| e.to_string())?;
                    last_sent = tokio::time::Instant::now();
                    last_components = Some(components);
                }
            }
            // While reports gather, they are the slot's frame (at most
            // `gather` late).
            _ = tokio::time::sleep_until(keepalive_due), if reports_due.is_none() => {
                last_sent = tokio::time::Instant::now();
                if sent.drain(outbox, &mut writer, Drain::Everything, &mut next_slot).await? {
                    unacknowledged_since.get_or_insert_with(Instant::now);
                    continue;
                }
                let components = element.components();
                let changed = last_components.as_ref() != Some(&components);
                if changed {
                    tracing::debug!(changed = ?changed_components(last_components.as_deref(), &components), "components changed");
                }
                let mut frames = std::mem::take(&mut next_slot);
                if frames.is_empty() || changed {
                    frames.push(Message::Control(Control::KeepAlive {
                        components: if changed { components.clone() } else { Vec::new() },
                    }));
                }
                writer.send_all(&frames).await.map_err(|e| e.to_string())?;
                last_components = Some(components);
            }
        }
    }
}

/// The components in `now` that `before` did not hold as they are.
fn changed_components<'a>(
    before: Option<&[ComponentStatus]>,
    now: &'a [ComponentStatus],
) -> Vec<&'a ComponentStatus> {
    now.iter()
        .filter(|c| !before.is_some_and(|b| b.contains(c)))
        .collect()
}

/// Most frames waiting for the keep-alive's slot (a parent asks for one
/// attestation at a time; more go at once).
const MAX_NEXT_SLOT: usize = 4;

/// Intervals within which the parent acknowledges an alarm or a report.
const ACKNOWLEDGED_WITHIN: u32 = 3;

/// How long written data may stay unacknowledged by the parent's host
/// before the kernel closes the link: one and a half intervals, never under
/// 5 s (TCP's retransmissions back off from 200 ms: 5 s is five of them, so
/// a lossy link is not taken for a cut one). A keep-alive goes every
/// interval, so a gone host is found 1.5 to 2.5 intervals after it went
/// (at 10 s), as soon as a silence used to be.
fn unacknowledged_for(keepalive: Duration) -> Duration {
    (keepalive * 3 / 2).max(Duration::from_secs(5))
}

/// How far this connection has sent each class of the outbox.
#[derive(Default)]
struct Sent {
    alarms: u64,
    reports: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Drain {
    /// Alarms, and reports only if a whole batch is waiting.
    Urgent,
    Everything,
}

impl Sent {
    /// Whether reports are queued that this connection has not sent.
    fn reports_waiting(&self, outbox: &Outbox) -> Result<bool, String> {
        Ok(!outbox
            .after(Class::Report, self.reports, 1)
            .map_err(|e| e.to_string())?
            .is_empty())
    }

    /// Sends what is queued and not yet sent on this connection: alarms
    /// (one frame each) and reports (one frame per batch), all in one
    /// write — one TLS record — per round, alarms first, re-checked between
    /// rounds. [`Drain::Urgent`] sends only if an alarm or a whole batch
    /// of reports waits (and then the reports waiting ride along). `riding`
    /// (frames waiting for a slot) goes in the first write. True if
    /// anything went out.
    async fn drain<W: AsyncWrite + Unpin>(
        &mut self,
        outbox: &Outbox,
        writer: &mut FrameWriter<W>,
        what: Drain,
        riding: &mut Vec<Message>,
    ) -> Result<bool, String> {
        let mut any = false;
        loop {
            let alarms = outbox
                .after(Class::Alarm, self.alarms, BATCH)
                .map_err(|e| e.to_string())?;
            let reports = outbox
                .after(Class::Report, self.reports, BATCH)
                .map_err(|e| e.to_string())?;
            let urgent = !alarms.is_empty() || reports.len() >= BATCH;
            if (alarms.is_empty() && reports.is_empty()) || (what == Drain::Urgent && !urgent) {
                return Ok(any);
            }
            // Whatever waits for a slot rides along (first, as it came first).
            let mut frames: Vec<Message> = std::mem::take(riding);
            frames.extend(alarms.into_iter().map(|entry| {
                self.alarms = entry.seq;
                Message::Alarm(Queued {
                    seq: entry.seq,
                    body: entry.body,
                })
            }));
            if !reports.is_empty() {
                let batch: Vec<Queued> = reports
                    .into_iter()
                    .map(|entry| {
                        self.reports = entry.seq;
                        Queued {
                            seq: entry.seq,
                            body: entry.body,
                        }
                    })
                    .collect();
                frames.push(Message::Reports(batch));
            }
            writer.send_all(&frames).await.map_err(|e| e.to_string())?;
            any = true;
        }
    }
}
