//! A manager's connected children, at every level: the top manager's
//! stations, a domain manager's nodes and its sub-domain stations.
//!
//! For: the one registry (name → session, outgoing queue, module hashes
//! held, typed status, liveness), the one session lifecycle
//! (hello → admit → register → welcome → frames → unregister), liveness by
//! accrual detection, and the typed [`ChildEvent`]s that other parts (the
//! guardian, the knowledge-base dispatcher, the dashboard) subscribe to
//! instead of adding code to the session loop. Not for: what a frame means
//! or who may join — a level says that by implementing [`Parent`].
//!
//! Every session runs in a `tracing` span with the child's name and role.
//! A child that stays silent (stopped process, partition) while its TCP
//! connection stays open is declared stale by [`Children::watch`], which
//! publishes [`ChildEvent::Stale`] and closes the session, so its role can
//! move on exactly as for a closed connection.

use crate::conn::{Connection, NetError, Outgoing, SendQueue, sleep_until_some, spawn_reader};
use crate::liveness::{Detector, LivenessConfig, OwnLag, PARENT_EVERY};
use crate::rate::{RateByKey, TokenBucket, Verdict};
use crate::tls::PeerIdentity;
use crate::waiting::{TooManyWaiting, Waiting};
use agad_protocol::message::Alarm;
use agad_protocol::text::{EXCERPT, excerpt};
use agad_protocol::wire::{
    Activation, ComponentStatus, Control, Enrollment, MAX_FRAME_LEN, Message, Role, Sender, State,
};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tracing::Instrument;

/// Suspicion at which [`ChildEvent::Suspect`] is published: a gap this
/// long is expected once in a thousand (stale is at φ ≥ 8).
pub const SUSPECT_PHI: f64 = 3.0;

/// Frames queued for one child (answers, deployments, replicas).
const QUEUE: usize = 256;
/// Events kept for a subscriber that falls behind; it then misses the
/// oldest ones and is told how many (`RecvError::Lagged`).
const EVENTS: usize = 4096;

/// How a level bounds and watches its children.
#[derive(Debug, Clone)]
pub struct ChildrenConfig {
    /// The stale threshold. Each child's interval is the one it declares in
    /// its hello, kept within `keepalive_bounds`.
    pub liveness: LivenessConfig,
    /// The shortest and longest keep-alive interval a child may declare.
    pub keepalive_bounds: (Duration, Duration),
    /// How often the watcher looks at every child.
    pub check_every: Duration,
    /// Longest wait for a new child's hello.
    pub hello_timeout: Duration,
    /// Admitted children at once; more are refused until one leaves.
    pub max_children: usize,
    /// Connections with a valid certificate not admitted yet, in all: a
    /// newcomer beyond this sheds the oldest (see [`crate::waiting`]).
    pub max_waiting: usize,
    /// ... and per certificate: more are refused at once.
    pub max_waiting_per_identity: usize,
    /// Largest frame a child may send before it is admitted (its hello).
    pub max_hello_frame: usize,
    /// Frames a child's session serves per second, after a burst; beyond
    /// that the session reads more slowly (the child's outbox holds the
    /// rest), so one flooding child cannot take the manager's disk or CPU
    /// from the others. Keep-alives do not count.
    pub frames_per_sec: f64,
    pub frame_burst: u32,
}

impl Default for ChildrenConfig {
    fn default() -> ChildrenConfig {
        ChildrenConfig::new()
    }
}

impl ChildrenConfig {
    pub fn new() -> ChildrenConfig {
        ChildrenConfig {
            liveness: LivenessConfig::new(Duration::from_secs(10)),
            keepalive_bounds: (Duration::from_millis(100), Duration::from_secs(600)),
            check_every: Duration::from_millis(100),
            hello_timeout: Duration::from_secs(10),
            max_children: 50_000,
            max_waiting: 256,
            max_waiting_per_identity: 2,
            max_hello_frame: 64 * 1024,
            frames_per_sec: 500.0,
            frame_burst: 5_000,
        }
    }
}

/// Which session of which child an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    pub name: String,
    pub role: Role,
    /// Distinguishes a reconnection from the session it replaced.
    pub session: u64,
    /// Where the child connected from (its host, for the guardian's probes).
    pub address: Option<SocketAddr>,
    /// The keep-alive interval it promised (within the level's bounds).
    pub keepalive: Duration,
}

/// What happens to a manager's children, for whoever subscribes.
#[derive(Debug, Clone)]
pub enum ChildEvent {
    Connected(ChildRef),
    /// A keep-alive; `components` is empty when nothing changed.
    KeepAlive {
        child: ChildRef,
        components: Arc<Vec<ComponentStatus>>,
    },
    /// An alarm from (or relayed by) this child is stored for good.
    AlarmStored {
        child: ChildRef,
        alarm: Arc<Alarm>,
    },
    /// Reports from this child are stored for good.
    ReportsStored {
        child: ChildRef,
        count: usize,
    },
    /// The nodes below this child moved on in running their deployment.
    DeployProgress {
        child: ChildRef,
        progress: Arc<agad_protocol::wire::DeployProgress>,
    },
    /// The child is late (φ ≥ [`SUSPECT_PHI`], about 2.2 intervals of
    /// silence): not declared stale yet, but worth a look (the guardian
    /// probes its host). Once per silence.
    Suspect {
        child: ChildRef,
        silent: Duration,
    },
    /// The child stopped sending while its connection stayed open; its
    /// session is being closed.
    Stale {
        child: ChildRef,
        silent: Duration,
        phi: f64,
    },
    Disconnected {
        child: ChildRef,
        reason: String,
    },
}

/// Why a session ended (or never started).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("a `{0}` may not connect here")]
    Role(Role),
    #[error("no hello within {} s", .0.as_secs())]
    HelloTimeout(Duration),
    #[error("expected a hello, got a `{0}` frame")]
    NotHello(&'static str),
    #[error("not admitted ({enrollment:?}): {reason}")]
    NotAdmitted {
        enrollment: Enrollment,
        reason: String,
    },
    #[error("{0} children already connected")]
    Full(usize),
    /// The child belongs elsewhere now: it is told where, and the link closes.
    #[error("sent to domain `{domain}` at {parents:?}")]
    Redirected {
        domain: String,
        parents: Vec<String>,
    },
    #[error("closed by the child")]
    Closed,
    #[error(transparent)]
    Net(#[from] NetError),
    /// The child broke the protocol (a frame it may not send, data about
    /// another origin); the frame is described by kind, never by content.
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("silent for {} ms", .0.as_millis())]
    Stale(Duration),
    #[error("replaced by a newer session of the same child")]
    Replaced,
    #[error("shutting down")]
    Shutdown,
    #[error("frame handler failed: {0}")]
    Handler(String),
    #[error(transparent)]
    Waiting(#[from] TooManyWaiting),
    #[error("shed: too many connections wait for admission, and this was the oldest")]
    Shed,
    /// The manager no longer serves its domain (another took over).
    #[error("this manager stepped down: {0}")]
    SteppedDown(String),
}

/// What a child said in its hello.
#[derive(Debug, Clone)]
pub struct Hello {
    pub ticket: Option<String>,
    /// A station: the domain of the replica it holds.
    pub serving: Option<String>,
    /// A station: where its own children reach it.
    pub advertise: Vec<String>,
    /// The interval at which the child promises a frame.
    pub keepalive: Duration,
    /// Module hashes (hex) the child already stores.
    pub modules_held: Vec<String>,
    /// A station: the generation of its activation for `serving` (0: none).
    pub generation: u64,
}

/// One connected child.
pub struct Entry<T> {
    pub session: u64,
    pub peer: PeerIdentity,
    /// Where the child connected from.
    pub address: Option<SocketAddr>,
    /// Frames for the child; its writer task sends them in order.
    pub to_child: mpsc::Sender<Outgoing>,
    /// Module hashes the child holds (from its hello, plus what was sent).
    pub held: HashSet<String>,
    /// Its components as its last changed keep-alive described them.
    pub components: Vec<ComponentStatus>,
    pub connected_at: Instant,
    /// What the level keeps about this child.
    pub data: T,
    detector: Detector,
    /// [`ChildEvent::Suspect`] was published for the current silence.
    suspected: bool,
    close: Option<oneshot::Sender<SessionError>>,
}

impl<T> Entry<T> {
    pub fn child(&self) -> ChildRef {
        ChildRef {
            name: self.peer.name.clone(),
            role: self.peer.role,
            session: self.session,
            address: self.address,
            keepalive: self.detector.interval(),
        }
    }

    /// Queues a frame for the child; false if its queue is full or closed
    /// (the session is ending or the child reads too slowly).
    pub fn send(&self, message: Message) -> bool {
        self.to_child.try_send(message.into()).is_ok()
    }

    /// Queues a frame that waits for the next one to the child and leaves
    /// with it, or after [`PARENT_EVERY`] of the child's intervals at the
    /// latest (see [`Outgoing::WithNext`]); false as for [`Entry::send`].
    pub fn send_with_next(&self, message: Message) -> bool {
        self.to_child.try_send(Outgoing::WithNext(message)).is_ok()
    }

    /// Queues a frame encoded once for many children (see
    /// [`Outgoing::Encoded`]); false as for [`Entry::send`].
    pub fn send_encoded(&self, frame: Arc<[u8]>) -> bool {
        self.to_child.try_send(Outgoing::Encoded(frame)).is_ok()
    }

    pub fn last_heard(&self) -> Instant {
        self.detector.last_heard()
    }

    /// The keep-alive interval the child promised.
    pub fn keepalive(&self) -> Duration {
        self.detector.interval()
    }

    /// Connected, with the names of its unhealthy components.
    pub fn state(&self) -> State {
        State::Connected {
            served_by: None,
            failing: self
                .components
                .iter()
                .filter(|c| !c.healthy())
                .map(|c| c.component.to_string())
                .collect(),
        }
    }
}

/// The registry of one kind of child, and the events about them.
pub struct Children<T> {
    entries: Mutex<HashMap<String, Entry<T>>>,
    events: broadcast::Sender<ChildEvent>,
    next_session: AtomicU64,
    config: ChildrenConfig,
    admitted: Arc<Semaphore>,
    /// The watcher's own recent lateness, in ms, granted before accusing.
    own_lag_ms: AtomicU64,
    /// Connected children not admitted yet.
    waiting: Arc<Waiting>,
    /// Lines each certificate may cause in the log.
    log: RateByKey,
    /// Children receiving a shared frame (a deployment) at once: the rest
    /// wait their wave. A child gives a frame a deadline by its size, so a
    /// deployment to thousands of nodes at once, each getting a
    /// thousandth of the bandwidth, would time out everywhere. A place is
    /// held until the frame has left the socket ([`sent`]), not only the
    /// process: the kernel's send buffer would take it all at once.
    shared_writes: Arc<Semaphore>,
}

/// How many children receive a shared frame at once (see
/// [`Children::shared_writes`]).
pub const SHARED_WRITES: usize = 64;
/// A shared frame has left when at most this much of it is unacknowledged.
const LEFT_BELOW: usize = 64 * 1024;
/// Longest a child holds its place in a wave after its frame was written:
/// a child that does not read must not stop the others.
const WAVE_HOLD: Duration = Duration::from_secs(10);

/// Waits (at most [`WAVE_HOLD`]) until the peer of `queue` has
/// acknowledged all but [`LEFT_BELOW`] of what was written.
async fn sent(queue: SendQueue) {
    let until = tokio::time::Instant::now() + WAVE_HOLD;
    while queue.unacknowledged().is_some_and(|n| n > LEFT_BELOW)
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl<T: Send + 'static> Children<T> {
    pub fn new(config: ChildrenConfig) -> Children<T> {
        Children {
            entries: Mutex::default(),
            events: broadcast::channel(EVENTS).0,
            next_session: AtomicU64::new(1),
            admitted: Arc::new(Semaphore::new(config.max_children)),
            own_lag_ms: AtomicU64::new(0),
            waiting: Arc::new(Waiting::new(
                config.max_waiting,
                config.max_waiting_per_identity,
            )),
            log: RateByKey::log_lines(),
            shared_writes: Arc::new(Semaphore::new(SHARED_WRITES)),
            config,
        }
    }

    pub fn config(&self) -> &ChildrenConfig {
        &self.config
    }

    /// The connected children. Hold the guard briefly: every frame of every
    /// child takes it too. Never read storage or decode modules under it.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry<T>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ChildEvent> {
        self.events.subscribe()
    }

    /// Publishes an event (nobody listening is fine).
    pub fn publish(&self, event: ChildEvent) {
        let _ = self.events.send(event);
    }

    /// Connections with a certificate that are not admitted yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Closes every child's session, each with `reason()` (a manager that
    /// stops serving). They are unregistered as for any other end.
    pub fn close_all(&self, reason: impl Fn() -> SessionError) {
        for entry in self.lock().values_mut() {
            if let Some(close) = entry.close.take() {
                let _ = close.send(reason());
            }
        }
    }

    /// When the child's current session last heard from it, and which
    /// session that is.
    pub fn last_heard(&self, name: &str) -> Option<(u64, Instant)> {
        self.lock().get(name).map(|e| (e.session, e.last_heard()))
    }

    /// The child's current session, if connected.
    pub fn child(&self, name: &str) -> Option<ChildRef> {
        self.lock().get(name).map(Entry::child)
    }

    /// Declares stale every child whose silence crossed the threshold, until
    /// `shutdown`. One task per registry, not one timer per child.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.config.check_every;
        let mut own = OwnLag::new(Duration::from_secs(30), every / 2);
        let mut due = Instant::now() + every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let lag = own.tick(due, now);
            self.own_lag_ms
                .store(lag.as_millis() as u64, Ordering::Relaxed);
            due = now + every;
            let mut stale = Vec::new();
            for entry in self.lock().values_mut() {
                if entry.close.is_none() {
                    continue;
                }
                // Once per child and check: tens of thousands, ten times a second.
                let phi = entry.detector.phi(now, lag);
                let silent = now.saturating_duration_since(entry.detector.last_heard());
                if !entry.suspected && phi >= SUSPECT_PHI {
                    entry.suspected = true;
                    stale.push(ChildEvent::Suspect {
                        child: entry.child(),
                        silent,
                    });
                }
                if phi >= entry.detector.threshold() {
                    if let Some(close) = entry.close.take() {
                        let _ = close.send(SessionError::Stale(silent));
                    }
                    stale.push(ChildEvent::Stale {
                        child: entry.child(),
                        silent,
                        phi,
                    });
                }
            }
            for event in stale {
                if let ChildEvent::Stale { child, silent, .. } = &event {
                    tracing::warn!(child = %child.name, role = %child.role, silent_ms = silent.as_millis() as u64, "child stale: closing its session");
                }
                self.publish(event);
            }
        }
    }

    fn heard(&self, name: &str, session: u64) {
        if let Some(e) = self.lock().get_mut(name)
            && e.session == session
        {
            e.detector.heard(Instant::now());
            e.suspected = false;
        }
    }
}

/// What a level supplies to serve its children.
pub trait Parent: Send + Sync + 'static {
    /// What the level keeps about each child.
    type Data: Send + 'static;

    /// The registry these children live in.
    fn children(&self) -> &Children<Self::Data>;

    /// The role these children must have in their certificate.
    fn role(&self) -> Role;

    /// Whether `peer` may come in, and what to keep about it. Runs on the
    /// blocking pool: enrollment reads and writes storage.
    fn admit(&self, peer: &PeerIdentity, hello: &Hello) -> Result<Self::Data, SessionError>;

    /// The child is registered and welcomed: send it what it needs first
    /// (assignment, replica, deployment) through the registry. Runs on the
    /// blocking pool.
    fn registered(&self, child: &ChildRef);

    /// One frame from the child: the answer to send (acks of several
    /// frames that arrive together are merged), or why to close. Runs on the
    /// blocking pool (alarms and reports are stored with an fsync before
    /// they are acknowledged); keep-alives never reach it (the layer
    /// records and answers them).
    fn handle(&self, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError>;

    /// The session ended; its entry is already out of the registry. Runs
    /// on the blocking pool.
    fn unregistered(&self, child: &ChildRef, data: Self::Data, reason: &SessionError);

    /// The activation this parent serves under, told to every child it
    /// welcomes (a domain manager's domain and generation; fencing).
    fn activation(&self) -> Option<Activation> {
        None
    }
}

/// Serves one authenticated connection as a child of `parent`, from hello to
/// unregister, in a span named after the child.
pub async fn serve_child<P: Parent>(
    parent: Arc<P>,
    connection: Connection,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "child",
        name = %connection.peer.name,
        role = %connection.peer.role,
        from = %connection.address.map(|a| a.to_string()).unwrap_or_default(),
    );
    let fingerprint = connection.peer.fingerprint.clone();
    async move {
        let reason = match session(parent.clone(), connection, shutdown).await {
            Ok(reason) | Err(reason) => reason,
        };
        // Whatever the child did, it costs a bounded number of lines.
        if let Verdict::Allowed { suppressed } = parent.children().log.check(&fingerprint) {
            let reason = excerpt(&reason.to_string(), 2 * EXCERPT);
            tracing::info!(suppressed, "session ended: {reason}");
        }
    }
    .instrument(span)
    .await
}

/// The lifecycle; `Ok` if the child was registered (the reason it left),
/// `Err` if it never was.
async fn session<P: Parent>(
    parent: Arc<P>,
    connection: Connection,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionError, SessionError> {
    let Connection {
        peer,
        mut reader,
        mut writer,
        address,
        send_queue,
    } = connection;
    if peer.role != parent.role() {
        return Err(SessionError::Role(peer.role));
    }
    let config = parent.children().config().clone();
    // Until admitted, the child holds a place among the waiters (bounded)
    // and may send one small frame, its hello.
    let (waiting, mut shed) = parent.children().waiting.enter(&peer.fingerprint)?;
    // Frames only a parent may send are refused before they are decoded.
    reader.set_sender(Sender::Child);
    reader.set_max_frame(config.max_hello_frame);
    let first = tokio::select! {
        first = tokio::time::timeout(config.hello_timeout, reader.recv()) => first,
        _ = &mut shed => return Err(SessionError::Shed),
        _ = shutdown.changed() => return Err(SessionError::Shutdown),
    };
    let hello = match first {
        Err(_) => return Err(SessionError::HelloTimeout(config.hello_timeout)),
        Ok(Ok(None)) => return Err(SessionError::Closed),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(Some(Message::Control(Control::Hello {
            ticket,
            modules_held,
            keepalive_ms,
            serving,
            advertise,
            generation,
            ..
        })))) => Hello {
            ticket,
            serving,
            advertise,
            modules_held,
            generation,
            keepalive: Duration::from_millis(keepalive_ms)
                .clamp(config.keepalive_bounds.0, config.keepalive_bounds.1),
        },
        Ok(Ok(Some(other))) => return Err(SessionError::NotHello(other.kind())),
    };
    let Ok(permit) = parent.children().admitted.clone().try_acquire_owned() else {
        let refusal = SessionError::Full(config.max_children);
        refuse(&mut writer, Enrollment::Active, refusal.to_string()).await;
        return Err(refusal);
    };
    let admitted = {
        let (parent, peer, hello) = (parent.clone(), peer.clone(), hello.clone());
        tokio::task::spawn_blocking(move || parent.admit(&peer, &hello))
            .await
            .map_err(|e| SessionError::Handler(e.to_string()))?
    };
    let data = match admitted {
        Ok(data) => data,
        Err(SessionError::NotAdmitted { enrollment, reason }) => {
            refuse(&mut writer, enrollment, reason.clone()).await;
            return Err(SessionError::NotAdmitted { enrollment, reason });
        }
        Err(SessionError::Redirected { domain, parents }) => {
            let redirect = Control::Redirect {
                domain: domain.clone(),
                parents: parents.clone(),
            };
            let _ = writer.send(&Message::Control(redirect)).await;
            let _ = writer.shutdown().await;
            return Err(SessionError::Redirected { domain, parents });
        }
        Err(other) => return Err(other),
    };

    // Register, replacing (and closing) an older session of the same child.
    let (to_child, mut outgoing) = mpsc::channel::<Outgoing>(QUEUE);
    let (close_tx, mut close_rx) = oneshot::channel();
    let children = parent.children();
    let session_id = children.next_session.fetch_add(1, Ordering::Relaxed);
    {
        let entry = Entry {
            session: session_id,
            peer: peer.clone(),
            address,
            to_child: to_child.clone(),
            held: hello.modules_held.into_iter().collect(),
            components: Vec::new(),
            connected_at: Instant::now(),
            data,
            detector: Detector::new(
                config.liveness.with_interval(hello.keepalive),
                Instant::now(),
            ),
            suspected: false,
            close: Some(close_tx),
        };
        // The rule for a second connection of the same certificate: the
        // newer replaces the older, which is closed (a node that lost its
        // link comes back before its old session is found stale). The old
        // session's end never unregisters the new one (see below).
        let old = children.lock().insert(peer.name.clone(), entry);
        if let Some(mut old) = old {
            if let Verdict::Allowed { suppressed } = children.log.check(&peer.fingerprint) {
                tracing::warn!(
                    replaced = old.session,
                    suppressed,
                    "a second connection of this certificate replaces its session"
                );
            }
            if let Some(close) = old.close.take() {
                let _ = close.send(SessionError::Replaced);
            }
        }
    }
    drop(waiting);
    reader.set_max_frame(MAX_FRAME_LEN);
    let mut incoming = spawn_reader(reader);
    let child = ChildRef {
        name: peer.name.clone(),
        role: peer.role,
        session: session_id,
        address,
        keepalive: hello.keepalive,
    };
    let _ = to_child.try_send(
        Message::Control(Control::Welcome {
            enrollment: Enrollment::Active,
            reason: String::new(),
            activation: parent.activation(),
        })
        .into(),
    );
    if let Verdict::Allowed { suppressed } = children.log.check(&peer.fingerprint) {
        tracing::info!(session = session_id, suppressed, "child registered");
    }
    children.publish(ChildEvent::Connected(child.clone()));
    {
        let (parent, child) = (parent.clone(), child.clone());
        let _ = tokio::task::spawn_blocking(move || parent.registered(&child)).await;
    }

    let shared_writes = children.shared_writes.clone();
    // When the writer last wrote to the child (ms after `opened`): a
    // keep-alive is answered only if nothing else went for a while.
    let opened = Instant::now();
    let wrote = Arc::new(AtomicU64::new(0));
    let wrote_at = wrote.clone();
    let hold = hello.keepalive * PARENT_EVERY;
    let writing = tokio::spawn(
        async move {
            // What is queued together leaves in one write: one TLS record
            // and usually one segment (an ack and a deployment, say).
            let mut batch = Vec::new();
            // Frames in no hurry, waiting for company until `until`.
            let mut waiting: Vec<Outgoing> = Vec::new();
            let mut until: Option<tokio::time::Instant> = None;
            loop {
                let late = tokio::select! {
                    n = outgoing.recv_many(&mut batch, QUEUE) => {
                        if n == 0 {
                            break;
                        }
                        false
                    }
                    () = sleep_until_some(until) => true,
                };
                let (patient, now): (Vec<_>, Vec<_>) = std::mem::take(&mut batch)
                    .into_iter()
                    .partition(|f| matches!(f, Outgoing::WithNext(_)));
                if !patient.is_empty() {
                    until.get_or_insert_with(|| tokio::time::Instant::now() + hold);
                    waiting.extend(patient);
                }
                // A queue's worth waiting goes anyway: what waits is
                // bounded like what is queued.
                if now.is_empty() && !late && waiting.len() < QUEUE {
                    continue;
                }
                let mut frames = std::mem::take(&mut waiting);
                frames.extend(now);
                until = None;
                // A shared frame (a deployment) waits for its wave.
                let wave = if frames.iter().any(|f| matches!(f, Outgoing::Encoded(_))) {
                    shared_writes.clone().acquire_owned().await.ok()
                } else {
                    None
                };
                if let Err(e) = writer.send_outgoing(&frames).await {
                    tracing::info!("write to child failed: {e}");
                    return;
                }
                wrote_at.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
                // Its place in the wave is given up once the frame has
                // left, not once it is in the kernel's send buffer (which
                // takes a whole deployment at once).
                if wave.is_some() {
                    sent(send_queue).await;
                }
            }
            let _ = writer.shutdown().await;
        }
        .in_current_span(),
    );

    // Acknowledgements of frames that arrive together go back as one.
    let mut acks: Vec<u64> = Vec::new();
    let mut pace = TokenBucket::new(config.frame_burst, config.frames_per_sec, Instant::now());
    let reason = loop {
        let next = if acks.is_empty() {
            tokio::select! {
                next = incoming.recv() => next,
                reason = &mut close_rx => break reason.unwrap_or(SessionError::Replaced),
                _ = shutdown.changed() => break SessionError::Shutdown,
            }
        } else {
            match incoming.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let ack = Control::Ack {
                        seqs: std::mem::take(&mut acks),
                    };
                    if to_child.send(Message::Control(ack).into()).await.is_err() {
                        break SessionError::Closed;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => break e.into(),
            None => break SessionError::Closed,
        };
        children.heard(&child.name, session_id);
        let handled = match message {
            Message::Control(Control::KeepAlive { components }) => {
                keep_alive(children, &child, components);
                // The child watches its parent by what it writes: answered
                // when nothing else went to it for all but half an interval
                // of `PARENT_EVERY` (acknowledgements of a window's reports,
                // commands and challenges usually do; a node whose window is
                // `PARENT_EVERY` intervals gets none).
                let quiet = opened
                    .elapsed()
                    .saturating_sub(Duration::from_millis(wrote.load(Ordering::Relaxed)));
                let answer_after = child.keepalive * PARENT_EVERY - child.keepalive / 2;
                Ok((quiet >= answer_after).then(|| {
                    Message::Control(Control::KeepAlive {
                        components: Vec::new(),
                    })
                }))
            }
            _ => {
                let wait = pace.take(Instant::now());
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        reason = &mut close_rx => break reason.unwrap_or(SessionError::Replaced),
                        _ = shutdown.changed() => break SessionError::Shutdown,
                    }
                }
                let (parent, child) = (parent.clone(), child.clone());
                tokio::task::spawn_blocking(move || parent.handle(&child, message))
                    .await
                    .unwrap_or_else(|e| Err(SessionError::Handler(e.to_string())))
            }
        };
        match handled {
            Ok(Some(Message::Control(Control::Ack { seqs }))) => acks.extend(seqs),
            Ok(Some(reply)) => {
                if to_child.send(reply.into()).await.is_err() {
                    break SessionError::Closed;
                }
            }
            Ok(None) => {}
            Err(e) => break e,
        }
    };
    if !acks.is_empty() {
        let _ = to_child.try_send(Message::Control(Control::Ack { seqs: acks }).into());
    }

    // Unregister (unless a newer session already took the name), let the
    // writer flush what is queued, and tell the level.
    // Only the level's data is kept: the entry's copy of the queue's sender
    // goes with the rest, so the writer sees the queue end and finishes.
    let removed = {
        let mut entries = children.lock();
        match entries.get(&child.name) {
            Some(e) if e.session == session_id => {
                entries.remove(&child.name).map(|entry| entry.data)
            }
            _ => None,
        }
    };
    drop(to_child);
    drop(permit);
    if tokio::time::timeout(Duration::from_secs(5), writing)
        .await
        .is_err()
    {
        tracing::info!("writer did not finish within 5 s");
    }
    let reason = match removed {
        Some(data) => {
            let child = child.clone();
            let parent = parent.clone();
            tokio::task::spawn_blocking(move || {
                parent.unregistered(&child, data, &reason);
                reason
            })
            .await
            .unwrap_or_else(|e| SessionError::Handler(e.to_string()))
        }
        None => reason,
    };
    children.publish(ChildEvent::Disconnected {
        child,
        reason: reason.to_string(),
    });
    Ok(reason)
}

fn keep_alive<T: Send + 'static>(
    children: &Children<T>,
    child: &ChildRef,
    components: Vec<ComponentStatus>,
) {
    let components = Arc::new(components);
    if !components.is_empty()
        && let Some(e) = children.lock().get_mut(&child.name)
        && e.session == child.session
    {
        e.components = components.as_ref().clone();
    }
    children.publish(ChildEvent::KeepAlive {
        child: child.clone(),
        components,
    });
}

/// Tells a child why it is not admitted (it retries later), then closes.
async fn refuse(writer: &mut crate::conn::Writer, enrollment: Enrollment, reason: String) {
    let _ = writer
        .send(&Message::Control(Control::Welcome {
            enrollment,
            reason,
            activation: None,
        }))
        .await;
    let _ = writer.shutdown().await;
}
