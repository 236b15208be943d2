//! The knowledge base at work: every alarm the station stores is evaluated
//! against BCN; a matching rule opens a case, ships its specialist to the
//! alarm's node and runs it, then, as the rule's chain says, runs a fix,
//! waits for the inspector to clear the alarm, or escalates to a person.
//!
//! Everything is on disk before it is acted on, so a `kill -9` loses
//! nothing and repeats nothing:
//! - an alarm is put in the inbox in the same flush that stores it in BICD,
//!   and leaves it only once evaluated (with its cases written);
//! - a run is recorded as pending before it is sent, and sent again to the
//!   node whenever the node (re)connects: the node runs each run id at most
//!   once ([`agad_protocol::run::run_id`]), so a resend after a restart or
//!   a fail-over never runs a specialist twice;
//! - a case goes to the top manager through the outbox at every change;
//! - after a fail-over, the station now serving the domain takes over the
//!   case of a run its predecessor asked for when the node's result comes
//!   to it (the result carries the alarm it answers), and the top manager
//!   keeps its revisions over the predecessor's ([`Case::supersedes`]).
//!
//! Rules and schedules that start or stop resident modules change the
//! nodes' deployments: [`changes`] says how, [`crate::nodes`] applies it
//! whenever it deploys, and the worker redeploys when a schedule comes due
//! or a rule's start runs out.

use crate::Station;
use agad_knowledge_base::{Action, Catalog, Chain, KnowledgeBase, State, Targets, Transition};
use agad_protocol::message::Alarm;
use agad_protocol::run::{
    Case, CaseState, RunOutcome, RunRequest, RunResult, StepKind, run_id, run_of,
};
use agad_protocol::wire::{self, Control, Message, Replica, Upward};
use agad_storage::{Database, StorageError, Tree};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Alarms waiting for evaluation; past this the oldest are evaluated late
/// but none is dropped (the inbox is on disk). Bounds one pass's work.
const BATCH: usize = 256;
/// Alarm ids remembered as evaluated (a replayed alarm is not counted twice).
const REMEMBERED: usize = 100_000;
/// How long past its deadline a run may stay without a result while its
/// node is connected, before the case gives up on it.
const RESULT_GRACE_MS: u64 = 60_000;
/// Key of the repetition state in the `kb` tree.
const STATE: &[u8] = b"state";
/// Results kept until a rule set is in force to take their cases over
/// (a node may deliver one to a station that took the domain over before
/// its replica came); past this, later ones are only logged.
const MAX_ORPHANS: usize = 1024;
/// Key, in the `kb` tree, of the time up to which due schedules were acted on.
const SCHEDULED_UNTIL: &[u8] = b"scheduled-until";

/// A resident module a rule started on a node (until `until_ms`), or
/// stopped there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMade {
    pub node: String,
    pub module: String,
    /// Stopped instead of started.
    pub stop: bool,
    pub config: Vec<(String, String)>,
    /// `None`: until the rule set changes it.
    pub until_ms: Option<u64>,
    pub rule: String,
}

/// What the knowledge base changes in one node's deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Modules to run (with this configuration) besides, or instead of,
    /// what the topology assigns.
    pub start: Vec<(String, Vec<(String, String)>)>,
    /// Modules not to run, assigned or not.
    pub stop: Vec<String>,
}

/// What the knowledge base changes in `node`'s deployment at `now_ms`
/// (domain `domain`): its schedules — running between their start and
/// stop dates, stopped from a lone stop date on — then what rules started
/// or stopped there, later decisions winning. Pure, so tests drive it with
/// their own clock.
pub fn changes(
    kb: Option<&KnowledgeBase>,
    rule_made: &[RuleMade],
    node: &str,
    domain: &str,
    now_ms: u64,
) -> Changes {
    let mut out = Changes::default();
    let mut set = |module: &str, run: Option<Vec<(String, String)>>| {
        out.start.retain(|(m, _)| m != module);
        out.stop.retain(|m| m != module);
        match run {
            Some(config) => out.start.push((module.to_owned(), config)),
            None => out.stop.push(module.to_owned()),
        }
    };
    if let Some(kb) = kb {
        for schedule in kb.schedules() {
            let targeted = match &schedule.targets {
                Targets::Nodes(nodes) | Targets::Group { nodes, .. } => {
                    nodes.iter().any(|n| n == node)
                }
                Targets::Domain(d) => d == domain,
            };
            if !targeted {
                continue;
            }
            if schedule.active_at(now_ms) {
                set(&schedule.module, Some(schedule.config.clone()));
            } else if schedule.start_ms.is_none()
                && schedule.stop_ms.is_some_and(|stop| stop <= now_ms)
            {
                set(&schedule.module, None);
            }
        }
    }
    for made in rule_made {
        if made.node == node && made.until_ms.is_none_or(|until| now_ms < until) {
            set(&made.module, (!made.stop).then(|| made.config.clone()));
        }
    }
    out
}

/// A run asked of a node, until its result comes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    case: String,
    node: String,
    step: StepKind,
    specialist: String,
    args: Vec<(String, String)>,
    deadline_ms: u64,
    sent_ms: u64,
    /// The alarm the run answers (sent with it, given back with the result).
    alarm: Alarm,
}

pub struct Dispatcher {
    kb: RwLock<Option<Arc<KnowledgeBase>>>,
    state: Mutex<State>,
    /// Alarm id → alarm, until evaluated.
    inbox: Tree,
    /// Alarm id → (), once evaluated.
    evaluated: Tree,
    /// Case key → [`Case`].
    cases: Tree,
    /// Run id → [`Pending`].
    pending: Tree,
    /// `<node>\0<module>` → [`RuleMade`].
    rule_made: Tree,
    /// Run id → [`RunResult`] of no case here, waiting for a rule set.
    orphans: Tree,
    meta: Tree,
    wake: Notify,
    /// Held while a case is read, changed and written: results come from
    /// the nodes' sessions, clears and expiries from the worker.
    editing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    pub fn open(db: &Database) -> Result<Dispatcher, StorageError> {
        let meta = db.tree("kb")?;
        let state = meta
            .get(STATE)?
            .and_then(|bytes| wire::decode_value::<State>(&bytes).ok())
            .unwrap_or_default();
        Ok(Dispatcher {
            kb: RwLock::new(None),
            state: Mutex::new(state),
            inbox: db.tree("kb-inbox")?,
            evaluated: db.tree("kb-evaluated")?,
            cases: db.tree("kb-cases")?,
            pending: db.tree("kb-pending")?,
            rule_made: db.tree("kb-rule-made")?,
            orphans: db.tree("kb-orphans")?,
            meta,
            wake: Notify::new(),
            editing: Mutex::new(()),
        })
    }

    /// Puts the replica's rule set in force. The top manager checked it
    /// against every published module and the whole topology; this station
    /// re-reads it against the modules its replica carries (the specialists
    /// and started modules the rules name are among them), trusting the
    /// top manager's check of alarm keys, metrics and nodes, which it
    /// cannot see whole. A set that does not parse keeps the one in force.
    pub fn set_rules(&self, replica: &Replica) {
        let files = &replica.rules;
        let kb = if files.is_empty() {
            None
        } else {
            let mut catalog = Catalog::with_runtime();
            for module in &replica.modules {
                catalog.add_manifest(&module.manifest);
            }
            catalog.trust_alarm_names = true;
            match KnowledgeBase::parse(files, &catalog) {
                Ok(kb) => Some(Arc::new(kb)),
                Err(errors) => {
                    for e in errors.iter().take(10) {
                        tracing::error!("knowledge base refused: {e}");
                    }
                    tracing::error!(
                        errors = errors.len(),
                        "the replica's rule set does not parse here; the previous one stays in force"
                    );
                    return;
                }
            }
        };
        if let Some(kb) = &kb {
            tracing::info!(rules = kb.rules().len(), "knowledge base in force");
        }
        *self.kb.write().unwrap_or_else(|p| p.into_inner()) = kb;
    }

    fn kb(&self) -> Option<Arc<KnowledgeBase>> {
        self.kb.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues a stored alarm for evaluation. Call before the flush that
    /// stores it in BICD: both are on disk together, or neither.
    pub fn enqueue(&self, alarm: &Alarm) -> Result<(), StorageError> {
        if self.kb().is_none() && alarm.raised {
            return Ok(());
        }
        self.inbox
            .insert(alarm.id.as_bytes(), &wire::encode_value(alarm))
    }

    /// Wakes the worker (an alarm was stored).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Every case this station holds, for status and tests.
    pub fn cases(&self) -> Vec<Case> {
        self.cases
            .scan_prefix(b"")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| wire::decode_value(&v).ok())
            .collect()
    }

    /// What the knowledge base changes in `node`'s deployment now.
    pub fn changes_for(&self, node: &str, domain: &str) -> Changes {
        changes(
            self.kb().as_deref(),
            &self.rule_made(),
            node,
            domain,
            crate::now_ms(),
        )
    }

    fn rule_made(&self) -> Vec<RuleMade> {
        self.rule_made
            .scan_prefix(b"")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| wire::decode_value(&v).ok())
            .collect()
    }

    fn case(&self, key: &str) -> Result<Option<Case>, StorageError> {
        Ok(self
            .cases
            .get(key.as_bytes())?
            .and_then(|v| wire::decode_value(&v).ok()))
    }
}

/// Writes `case` (one revision more) and queues it for the top manager.
fn save(station: &Station, mut case: Case, now_ms: u64) -> Result<Case, StorageError> {
    case.generation = station.generation();
    case.revision += 1;
    case.updated_ms = now_ms;
    let d = &station.dispatch;
    d.cases
        .insert(case.key().as_bytes(), &wire::encode_value(&case))?;
    station.outbox.push(&Upward::Case(case.clone()))?;
    tracing::info!(case = %case.key(), state = %case.state.label(), revision = case.revision, "case updated");
    Ok(case)
}

/// Evaluates what is in the inbox. Blocking (sled, fsync).
fn evaluate_inbox(station: &Station) -> Result<(), StorageError> {
    let d = &station.dispatch;
    let _editing = lock(&d.editing);
    let entries = d.inbox.entries_after(b"", BATCH)?;
    if entries.is_empty() {
        return Ok(());
    }
    let kb = d.kb();
    // Acted on, then marked evaluated, then out of the inbox: writes reach
    // the disk in order, so a crash in between evaluates the alarm again
    // (its cases and runs, keyed by alarm and rule, are not made twice)
    // rather than never.
    for (key, value) in entries {
        if d.evaluated.get(&key)?.is_none()
            && let Ok(alarm) = wire::decode_value::<Alarm>(&value)
        {
            let now = crate::now_ms();
            if alarm.raised {
                if let Some(kb) = &kb {
                    open_cases(station, kb, &alarm, now)?;
                }
            } else {
                confirm_fixes(station, &alarm, now)?;
            }
            d.evaluated.insert(&key, &[])?;
        }
        d.inbox.remove(&key)?;
    }
    let state = wire::encode_value(&*lock(&d.state));
    d.meta.insert(STATE, &state)?;
    forget_oldest(&d.evaluated)?;
    station.bases.flush()
}

/// Keeps the newest [`REMEMBERED`] evaluated ids (sled keys are ordered by
/// id, not by time: ids of one node and module grow, so this drops low
/// serials first, which is good enough for a replay guard).
fn forget_oldest(tree: &Tree) -> Result<(), StorageError> {
    let excess = tree.len().saturating_sub(REMEMBERED);
    if excess > 0 {
        for (key, _) in tree.entries_after(b"", excess)? {
            tree.remove(&key)?;
        }
    }
    Ok(())
}

/// The rules that act on a raised alarm: a case per chain.
fn open_cases(
    station: &Station,
    kb: &KnowledgeBase,
    alarm: &Alarm,
    now: u64,
) -> Result<(), StorageError> {
    let decisions = {
        let mut state = lock(&station.dispatch.state);
        kb.evaluate(&mut state, alarm, now)
    };
    for decision in decisions {
        let rule = decision.rule;
        match &rule.action {
            Action::Chain(chain) => {
                let key = format!("{}#{}", alarm.id, rule.name);
                if station.dispatch.case(&key)?.is_some() {
                    continue;
                }
                tracing::info!(alarm = %alarm.id, rule = %rule.name, "rule matched: opening a case");
                let mut case = Case {
                    alarm_id: alarm.id.clone(),
                    node: alarm.node.clone(),
                    key: alarm.key.clone(),
                    rule: rule.name.clone(),
                    steps: vec![(StepKind::Diagnose, chain.diagnose.specialist.clone())],
                    results: Vec::new(),
                    state: CaseState::Running {
                        step: StepKind::Diagnose,
                    },
                    cleared_ms: None,
                    generation: 0,
                    revision: 0,
                    opened_ms: now,
                    updated_ms: now,
                };
                let run = match chain.diagnose.render_args(alarm, &[]) {
                    Ok(args) => {
                        record_run(station, &case, chain, StepKind::Diagnose, args, alarm, now)?
                    }
                    Err(missing) => Err(format!("diagnosis not run: {missing}")),
                };
                match run {
                    Ok((id, pending)) => {
                        save(station, case, now)?;
                        station.bases.flush()?;
                        send_run(station, &id, &pending);
                    }
                    Err(reason) => {
                        case.state = end_without_fix(chain, reason);
                        save(station, case, now)?;
                    }
                }
            }
            Action::Start(start) => {
                let config: Result<Vec<(String, String)>, _> = start
                    .config
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(alarm, &[])?)))
                    .collect();
                match config {
                    Ok(config) => rule_made(
                        station,
                        RuleMade {
                            node: alarm.node.clone(),
                            module: start.module.clone(),
                            stop: false,
                            config,
                            until_ms: start.for_ms.map(|ms| now + ms),
                            rule: rule.name.clone(),
                        },
                    )?,
                    Err(agad_knowledge_base::MissingFact(fact)) => {
                        tracing::warn!(alarm = %alarm.id, rule = %rule.name, "start not done: no `{fact}` to fill its configuration");
                    }
                }
            }
            Action::Stop { module } => rule_made(
                station,
                RuleMade {
                    node: alarm.node.clone(),
                    module: module.clone(),
                    stop: true,
                    config: Vec::new(),
                    until_ms: None,
                    rule: rule.name.clone(),
                },
            )?,
        }
    }
    Ok(())
}

/// Records a module a rule started or stopped on a node, and redeploys it.
fn rule_made(station: &Station, made: RuleMade) -> Result<(), StorageError> {
    tracing::info!(node = %made.node, module = %made.module, stop = made.stop, rule = %made.rule, until_ms = ?made.until_ms, "rule changes a node's modules");
    let key = format!("{}\0{}", made.node, made.module);
    station
        .dispatch
        .rule_made
        .insert(key.as_bytes(), &wire::encode_value(&made))?;
    station.bases.flush()?;
    if let Some(replica) = station.replica() {
        crate::nodes::redeploy(station, &replica, Some(&made.node));
    }
    Ok(())
}

/// How a chain ends when its fix is not confirmed: escalated to whoever
/// the rule names, or failed.
fn end_without_fix(chain: &Chain, reason: String) -> CaseState {
    match &chain.escalate {
        Some(to) => CaseState::Escalated {
            to: to.clone(),
            reason,
        },
        None => CaseState::Failed { reason },
    }
}

/// A run of `step` of `chain` for `case`, recorded as pending (the caller
/// saves the case, then sends it). Recorded before the case says it runs:
/// a crash in between leaves a run the case's next write will name, never
/// a case waiting on a run nobody recorded. `Err(reason)`: the specialist
/// was not given to this domain, which ends the case (never silently).
fn record_run(
    station: &Station,
    case: &Case,
    chain: &Chain,
    step: StepKind,
    args: Vec<(String, String)>,
    alarm: &Alarm,
    now: u64,
) -> Result<Result<(String, Pending), String>, StorageError> {
    let (specialist, deadline_ms) = match (step, &chain.fix) {
        (StepKind::Diagnose, _) => (&chain.diagnose.specialist, chain.diagnose.deadline_ms),
        (StepKind::Fix, Some(fix)) => (&fix.step.specialist, fix.step.deadline_ms),
        (StepKind::Fix, None) => return Ok(Err("the rule has no fix".into())),
    };
    let published = station
        .replica()
        .is_some_and(|r| r.modules.iter().any(|m| m.manifest.name == *specialist));
    if !published {
        return Ok(Err(format!(
            "{step} not run: specialist `{specialist}` is not published to this domain"
        )));
    }
    let id = run_id(&case.alarm_id, &case.rule, step);
    let pending = Pending {
        case: case.key(),
        node: case.node.clone(),
        step,
        specialist: specialist.to_owned(),
        args,
        deadline_ms,
        sent_ms: now,
        alarm: alarm.clone(),
    };
    station
        .dispatch
        .pending
        .insert(id.as_bytes(), &wire::encode_value(&pending))?;
    Ok(Ok((id, pending)))
}

/// Sends one pending run to its node, if connected: the manifest, and the
/// bytes only if the node does not hold them.
fn send_run(station: &Station, id: &str, pending: &Pending) {
    let Some(replica) = station.replica() else {
        return;
    };
    let Some(copy) = replica
        .modules
        .iter()
        .find(|m| m.manifest.name == pending.specialist)
    else {
        tracing::warn!(run = %id, specialist = %pending.specialist, "specialist not in this domain's replica: waiting for one that has it");
        return;
    };
    let hash = copy.manifest.sha256_hex();
    let held = station
        .nodes
        .lock()
        .get(&pending.node)
        .map(|e| e.held.contains(&hash));
    let Some(held) = held else {
        tracing::info!(run = %id, node = %pending.node, "node not connected: the run waits for it");
        return;
    };
    let module = if held {
        copy.without_bytes()
    } else {
        match station.bases.module(&hash) {
            Ok(Some(full)) => full,
            Ok(None) | Err(_) => {
                tracing::error!(run = %id, specialist = %pending.specialist, "specialist bytes missing from BC");
                return;
            }
        }
    };
    let request = RunRequest {
        id: id.to_owned(),
        module,
        args: pending.args.clone(),
        deadline_ms: pending.deadline_ms,
        alarm: pending.alarm.clone(),
    };
    if let Some(e) = station.nodes.lock().get_mut(&pending.node)
        && e.send(Message::Control(Control::Run(Box::new(request))))
    {
        e.held.insert(hash);
        tracing::info!(run = %id, node = %pending.node, specialist = %pending.specialist, with_bytes = !held, "specialist run sent");
    }
}

/// A node (re)connected: its pending runs go again (it refuses those it
/// already accepted).
pub fn node_connected(station: &Station, node: &str) {
    let now = crate::now_ms();
    for (id, mut pending) in pending_runs(station) {
        if pending.node == node {
            // Its deadline counts from now: the node was away.
            pending.sent_ms = now;
            if let Err(e) = station
                .dispatch
                .pending
                .insert(id.as_bytes(), &wire::encode_value(&pending))
            {
                tracing::error!(run = %id, "cannot record a resent run: {e}");
            }
            send_run(station, &id, &pending);
        }
    }
}

fn pending_runs(station: &Station) -> Vec<(String, Pending)> {
    station
        .dispatch
        .pending
        .scan_prefix(b"")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                String::from_utf8(k).ok()?,
                wire::decode_value::<Pending>(&v).ok()?,
            ))
        })
        .collect()
}

/// A node's result: kept with its case, which moves on. Blocking. A result
/// for no pending run is recorded only if its case does not have it yet: a
/// replay, or a run given up on, is only logged; a run a predecessor asked
/// for before a fail-over is taken over ([`take_over`]).
pub fn received(station: &Station, result: RunResult) -> Result<(), StorageError> {
    let d = &station.dispatch;
    let _editing = lock(&d.editing);
    let now = crate::now_ms();
    let pending = d
        .pending
        .get(result.id.as_bytes())?
        .and_then(|v| wire::decode_value::<Pending>(&v).ok());
    let (pending, mut case) = match pending {
        Some(pending) => match d.case(&pending.case)? {
            Some(case) => (pending, case),
            None => {
                d.pending.remove(result.id.as_bytes())?;
                return station.bases.flush();
            }
        },
        None => {
            let key = run_of(&result.id, &result.alarm.id)
                .map(|(rule, _)| format!("{}#{rule}", result.alarm.id));
            if key.is_none_or(|key| d.case(&key).ok().flatten().is_some()) {
                tracing::info!(run = %result.id, "result of no pending run (already recorded or given up): kept only in the log");
                return Ok(());
            }
            let Some(kb) = d.kb() else {
                return keep_orphan(station, &result);
            };
            match take_over(&kb, &result, now) {
                Ok(taken) => {
                    tracing::info!(run = %result.id, "took over the case of a run asked for before a fail-over");
                    taken
                }
                Err(why) => {
                    tracing::warn!(run = %result.id, "result of a run no rule here asks for: {why}; kept only in the log");
                    return Ok(());
                }
            }
        }
    };
    if case.results.iter().any(|(_, r)| r.id == result.id) {
        // Delivered again after a crash that came after the case was
        // written: only the pending run is left to clear.
        d.pending.remove(result.id.as_bytes())?;
        return station.bases.flush();
    }
    tracing::info!(run = %result.id, outcome = %result.outcome.label(), "specialist result received");
    let outcome = result.outcome.clone();
    let run = result.id.clone();
    case.results.push((pending.step, result));
    let chain = d.kb().and_then(|kb| match &kb.rule(&case.rule)?.action {
        Action::Chain(chain) => Some(chain.clone()),
        _ => None,
    });
    let mut next = None;
    case.state = match (pending.step, &outcome, &chain) {
        (StepKind::Diagnose, RunOutcome::Diagnosed { facts, .. }, Some(chain)) => {
            match &chain.fix {
                None => CaseState::Diagnosed,
                Some(fix) if fix.condition.as_ref().is_none_or(|c| c.holds(facts)) => {
                    let alarm = &pending.alarm;
                    let run = match fix.step.render_args(alarm, facts) {
                        Ok(args) => {
                            record_run(station, &case, chain, StepKind::Fix, args, alarm, now)?
                        }
                        Err(missing) => Err(format!("fix not run: {missing}")),
                    };
                    match run {
                        Ok(run) => {
                            next = Some(run);
                            case.steps
                                .push((StepKind::Fix, fix.step.specialist.clone()));
                            CaseState::Running {
                                step: StepKind::Fix,
                            }
                        }
                        Err(reason) => end_without_fix(chain, reason),
                    }
                }
                Some(fix) => end_without_fix(
                    chain,
                    format!(
                        "diagnosed; no fix applied ({} does not hold)",
                        fix.condition
                            .as_ref()
                            .map_or_else(String::new, |c| c.to_string())
                    ),
                ),
            }
        }
        // The inspector may clear the alarm before the fix's result is in.
        (StepKind::Fix, RunOutcome::Diagnosed { .. }, _) if case.cleared_ms.is_some() => {
            CaseState::FixedConfirmed
        }
        (StepKind::Fix, RunOutcome::Diagnosed { .. }, Some(chain)) => CaseState::Confirming {
            until_ms: now + chain.confirm_within_ms.unwrap_or(0),
        },
        (step, RunOutcome::Diagnosed { .. }, None) => match step {
            // The rule changed meanwhile: what ran is the outcome.
            StepKind::Diagnose => CaseState::Diagnosed,
            StepKind::Fix => CaseState::Failed {
                reason: "fixed, but the rule is gone: nothing confirms it".into(),
            },
        },
        (step, other, chain) => {
            let reason = format!("{step} {}: {}", other.label(), other.text());
            match chain {
                Some(chain) => end_without_fix(chain, reason),
                None => CaseState::Failed { reason },
            }
        }
    };
    save(station, case, now)?;
    d.pending.remove(run.as_bytes())?;
    station.bases.flush()?;
    if let Some((id, pending)) = next {
        send_run(station, &id, &pending);
    }
    Ok(())
}

/// The case of `result`, a run this station did not ask for, as the
/// station before it opened it, if the rule set here has the rule with
/// that specialist at that step; with the run as it would have recorded
/// it. The case's key and its node's id space were checked with the
/// result: a node can only make this station take over a case of its own
/// alarms, as raising one would.
fn take_over(kb: &KnowledgeBase, result: &RunResult, now: u64) -> Result<(Pending, Case), String> {
    let alarm = &result.alarm;
    let (rule, step) = run_of(&result.id, &alarm.id).ok_or("not a run of its alarm")?;
    let chain = match kb.rule(rule).map(|r| &r.action) {
        Some(Action::Chain(chain)) => chain,
        Some(_) => return Err(format!("rule `{rule}` runs no specialist")),
        None => return Err(format!("no rule `{rule}` in force here")),
    };
    let run = match (step, &chain.fix) {
        (StepKind::Diagnose, _) => &chain.diagnose,
        (StepKind::Fix, Some(fix)) => &fix.step,
        (StepKind::Fix, None) => return Err(format!("rule `{rule}` has no fix")),
    };
    if run.specialist != result.specialist {
        return Err(format!(
            "rule `{rule}` runs `{}` to {step}, not `{}`",
            run.specialist, result.specialist
        ));
    }
    let mut steps = vec![(StepKind::Diagnose, chain.diagnose.specialist.clone())];
    if step == StepKind::Fix {
        steps.push((StepKind::Fix, run.specialist.clone()));
    }
    let case = Case {
        alarm_id: alarm.id.clone(),
        node: alarm.node.clone(),
        key: alarm.key.clone(),
        rule: rule.to_owned(),
        steps,
        results: Vec::new(),
        state: CaseState::Running { step },
        cleared_ms: None,
        generation: 0,
        revision: 0,
        opened_ms: now,
        updated_ms: now,
    };
    let pending = Pending {
        case: case.key(),
        node: alarm.node.clone(),
        step,
        specialist: run.specialist.clone(),
        args: Vec::new(),
        deadline_ms: run.deadline_ms,
        sent_ms: now,
        alarm: alarm.clone(),
    };
    Ok((pending, case))
}

/// Keeps a result no rule set here can take over yet (none is in force):
/// taken over once one is ([`take_over_orphans`]).
fn keep_orphan(station: &Station, result: &RunResult) -> Result<(), StorageError> {
    let orphans = &station.dispatch.orphans;
    if orphans.len() >= MAX_ORPHANS {
        tracing::warn!(run = %result.id, "result of no case, and {MAX_ORPHANS} such results wait already: kept only in the log");
        return Ok(());
    }
    tracing::info!(run = %result.id, "result of no case before a rule set is in force: kept until one is");
    orphans.insert(result.id.as_bytes(), &wire::encode_value(result))?;
    station.bases.flush()
}

/// Results kept by [`keep_orphan`], now that a rule set is in force.
fn take_over_orphans(station: &Station) -> Result<(), StorageError> {
    let d = &station.dispatch;
    if d.kb().is_none() || d.orphans.is_empty() {
        return Ok(());
    }
    for (key, value) in d.orphans.entries_after(b"", BATCH)? {
        d.orphans.remove(&key)?;
        if let Ok(result) = wire::decode_value::<RunResult>(&value) {
            received(station, result)?;
        }
    }
    station.bases.flush()
}

/// A clear of a node's key confirms the fixes waiting on it, and is noted
/// on those still running (confirmed when they succeed).
fn confirm_fixes(station: &Station, clear: &Alarm, now: u64) -> Result<(), StorageError> {
    for mut case in station.dispatch.cases() {
        if case.node != clear.node || case.key != clear.key {
            continue;
        }
        match case.state {
            CaseState::Confirming { .. } => case.state = CaseState::FixedConfirmed,
            CaseState::Running {
                step: StepKind::Fix,
            } if case.cleared_ms.is_none() => case.cleared_ms = Some(now),
            _ => continue,
        }
        save(station, case, now)?;
    }
    Ok(())
}

/// Fixes not confirmed in time escalate; runs that never answered give up.
fn expire(station: &Station) -> Result<(), StorageError> {
    let d = &station.dispatch;
    let _editing = lock(&d.editing);
    let now = crate::now_ms();
    let mut changed = false;
    for case in d.cases() {
        if let CaseState::Confirming { until_ms } = case.state
            && now >= until_ms
        {
            let chain = d.kb().and_then(|kb| match &kb.rule(&case.rule)?.action {
                Action::Chain(chain) => Some(chain.clone()),
                _ => None,
            });
            let reason = "fixed, but the alarm did not clear in time".to_owned();
            let mut case = case;
            case.state = match chain {
                Some(chain) => end_without_fix(&chain, reason),
                None => CaseState::Failed { reason },
            };
            save(station, case, now)?;
            changed = true;
        }
    }
    // A station that stepped down will not see its nodes again: another
    // station serves them, and their results go there.
    let stepped_down = station.is_stepped_down();
    for (id, pending) in pending_runs(station) {
        let connected = station.nodes.lock().contains_key(&pending.node);
        if (connected || stepped_down)
            && now > pending.sent_ms + pending.deadline_ms + RESULT_GRACE_MS
        {
            d.pending.remove(id.as_bytes())?;
            if let Some(mut case) = d.case(&pending.case)? {
                let reason = if stepped_down {
                    "this manager stepped down before the result came: the node \
                     reports to the manager now serving the domain"
                        .to_owned()
                } else {
                    format!(
                        "{} sent no result within its deadline and {} s more",
                        pending.node,
                        RESULT_GRACE_MS / 1000
                    )
                };
                case.state = CaseState::Failed { reason };
                save(station, case, now)?;
            }
            changed = true;
        }
    }
    // Rule-made starts that ran out, and schedules that came due since the
    // last pass: the nodes' deployments change.
    let mut redeploy = false;
    for made in d.rule_made() {
        if made.until_ms.is_some_and(|until| until <= now) {
            d.rule_made
                .remove(format!("{}\0{}", made.node, made.module).as_bytes())?;
            tracing::info!(node = %made.node, module = %made.module, rule = %made.rule, "a rule's start ran out");
            changed = true;
            redeploy = true;
        }
    }
    let since = d
        .meta
        .get(SCHEDULED_UNTIL)?
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(now);
    if let Some(kb) = d.kb() {
        for due in kb.due(since, now) {
            let what = match due.transition {
                Transition::Start => "start",
                Transition::Stop => "stop",
            };
            tracing::info!(schedule = %due.schedule.name, module = %due.schedule.module, at_ms = due.at_ms, "scheduled {what} due");
            redeploy = true;
        }
    }
    d.meta.insert(SCHEDULED_UNTIL, &now.to_be_bytes())?;
    if changed {
        station.bases.flush()?;
    }
    if redeploy && let Some(replica) = station.replica() {
        crate::nodes::redeploy(station, &replica, None);
    }
    Ok(())
}

/// The dispatcher's loop: evaluates what is stored, expires what waited too
/// long, until `shutdown`.
pub async fn run(station: Arc<Station>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let s = station.clone();
        let pass = tokio::task::spawn_blocking(move || {
            evaluate_inbox(&s)?;
            take_over_orphans(&s)?;
            expire(&s)
        })
        .await;
        match pass {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("knowledge base dispatch failed: {e}"),
            Err(e) => tracing::error!("knowledge base dispatch task failed: {e}"),
        }
        tokio::select! {
            _ = station.dispatch.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date-time.
    fn at(text: &str) -> u64 {
        let t = humantime::parse_rfc3339(text).unwrap();
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn kb() -> KnowledgeBase {
        let text = r#"
[[schedule]]
name = "night-probe"
module = "link-watch"
config = { target = "core-1", period = "10s" }
nodes = ["n1"]
start = 2026-12-05T22:00:00Z
stop = 2026-12-06T04:00:00Z

[[schedule]]
name = "retire-snmp"
module = "snmp-threshold"
domain = "lab"
stop = 2026-12-10T00:00:00Z
"#;
        let mut catalog = Catalog::with_runtime();
        catalog.trust_alarm_names = true;
        let target = agad_protocol::ConfigKey {
            name: "target".into(),
            kind: agad_protocol::ConfigType::String,
            required: true,
            default: None,
            description: "host to probe".into(),
        };
        catalog.modules.insert("link-watch".into(), vec![target]);
        catalog.modules.insert("snmp-threshold".into(), vec![]);
        KnowledgeBase::parse(&[("s.toml".into(), text.into())], &catalog).unwrap()
    }

    #[test]
    fn schedules_change_a_deployment_exactly_between_their_dates() {
        let kb = kb();
        let changes = |node: &str, t: &str| changes(Some(&kb), &[], node, "lab", at(t));
        assert_eq!(
            changes("n1", "2026-12-05T21:59:59.999Z"),
            Changes::default()
        );
        let probe = (
            "link-watch".to_owned(),
            vec![
                ("period".to_owned(), "10s".to_owned()),
                ("target".to_owned(), "core-1".to_owned()),
            ],
        );
        assert_eq!(changes("n1", "2026-12-05T22:00:00Z").start, vec![probe]);
        assert_eq!(changes("n2", "2026-12-05T23:00:00Z"), Changes::default());
        assert_eq!(changes("n1", "2026-12-06T04:00:00Z"), Changes::default());
        // A lone stop date stops the module on every node of the domain.
        assert_eq!(
            changes("n2", "2026-12-10T00:00:00Z").stop,
            vec!["snmp-threshold".to_owned()]
        );
        assert!(changes("n2", "2026-12-09T23:59:59Z").stop.is_empty());
        assert_eq!(
            kb.due(at("2026-12-05T21:00:00Z"), at("2026-12-05T22:00:00Z"))
                .len(),
            1
        );
    }

    #[test]
    fn a_rule_made_start_lasts_until_its_end_and_later_decisions_win() {
        let kb = kb();
        let started = RuleMade {
            node: "n1".into(),
            module: "cpu-mem".into(),
            stop: false,
            config: vec![("period".into(), "1s".into())],
            until_ms: Some(at("2026-12-01T01:00:00Z")),
            rule: "load-keeps-coming".into(),
        };
        let c = changes(
            Some(&kb),
            std::slice::from_ref(&started),
            "n1",
            "lab",
            at("2026-12-01T00:59:59Z"),
        );
        assert_eq!(
            c.start,
            vec![("cpu-mem".to_owned(), started.config.clone())]
        );
        let c = changes(
            Some(&kb),
            std::slice::from_ref(&started),
            "n1",
            "lab",
            at("2026-12-01T01:00:00Z"),
        );
        assert_eq!(c, Changes::default());
        // A rule that stops the night probe while its schedule runs it.
        let stopped = RuleMade {
            module: "link-watch".into(),
            stop: true,
            config: vec![],
            until_ms: None,
            ..started
        };
        let c = changes(
            Some(&kb),
            &[stopped],
            "n1",
            "lab",
            at("2026-12-05T23:00:00Z"),
        );
        assert_eq!((c.start, c.stop), (vec![], vec!["link-watch".to_owned()]));
    }

    #[test]
    fn a_result_asked_for_before_a_fail_over_is_taken_over_only_by_its_rule() {
        let text = r#"
[[rule]]
name = "cpu-hog"
[rule.match]
key = "cpu.total"
[rule.diagnose]
specialist = "top-cpu"
deadline = "20s"
[rule.fix]
specialist = "service-restart"
args = { service = "{subject}" }
"#;
        let mut catalog = Catalog::with_runtime();
        catalog.trust_alarm_names = true;
        for name in ["top-cpu", "service-restart"] {
            let arg = |n: &str| agad_protocol::ConfigKey {
                name: n.into(),
                kind: agad_protocol::ConfigType::String,
                required: false,
                default: None,
                description: String::new(),
            };
            catalog
                .specialists
                .insert(name.into(), vec![arg("service"), arg("sample")]);
        }
        let kb = KnowledgeBase::parse(&[("r.toml".into(), text.into())], &catalog).unwrap();
        let alarm = agad_protocol::message::RuntimeAlarm {
            node: "n1",
            module: "cpu-mem",
            serial: "7",
            area: agad_protocol::Area::Performance,
            key: "cpu.total",
            metric: "cpu.total-percent",
            subject: "",
            severity: agad_protocol::message::Severity::Major,
            message: "CPU high",
            time_ms: 1,
        }
        .alarm(true);
        let result = |rule: &str, step: StepKind, specialist: &str| RunResult {
            id: run_id(&alarm.id, rule, step),
            node: "n1".into(),
            specialist: specialist.into(),
            provenance: Default::default(),
            outcome: RunOutcome::Diagnosed {
                summary: "s".into(),
                facts: vec![],
            },
            started_ms: 1,
            finished_ms: 2,
            alarm: alarm.clone(),
        };
        let (pending, case) =
            take_over(&kb, &result("cpu-hog", StepKind::Diagnose, "top-cpu"), 5).unwrap();
        assert_eq!(case.key(), "n1/cpu-mem/7#cpu-hog");
        assert_eq!((case.node.as_str(), case.key.as_str()), ("n1", "cpu.total"));
        assert_eq!(
            case.state,
            CaseState::Running {
                step: StepKind::Diagnose
            }
        );
        assert_eq!(
            (pending.step, pending.deadline_ms),
            (StepKind::Diagnose, 20_000)
        );
        assert_eq!(pending.case, case.key());
        // A fix's result: the case has both steps.
        let (_, case) =
            take_over(&kb, &result("cpu-hog", StepKind::Fix, "service-restart"), 5).unwrap();
        assert_eq!(case.steps.len(), 2);
        // Not this rule set's: no rule, or another specialist at that step.
        assert!(
            take_over(&kb, &result("other", StepKind::Diagnose, "top-cpu"), 5)
                .unwrap_err()
                .contains("no rule `other`")
        );
        assert!(
            take_over(
                &kb,
                &result("cpu-hog", StepKind::Diagnose, "service-restart"),
                5
            )
            .unwrap_err()
            .contains("runs `top-cpu` to diagnose")
        );
    }
}
