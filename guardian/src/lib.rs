//! The guardian: at every level, that every element is alive, and what
//! failed when one goes silent — the AGAD thesis' guardian.
//!
//! A manager's children layer ([`agad_net::children`]) notices silence (a
//! stale keep-alive, a dropped connection) and publishes it; the guardian
//! subscribes and confirms before it accuses: after a short grace for a
//! reconnection it probes the element's host ([`probe`]: ICMP echo, TCP).
//! Host unreachable → a critical "host down" alarm; host up but element
//! silent → "agent down" (its process failed). Both are re-probed while the
//! element stays away, so the diagnosis follows what happens (a host that
//! comes back before its process), and clear by themselves when it
//! returns, with how long it was down. Failures are kept in the manager's
//! database, so a restarted manager still clears what it raised. A child
//! the manager expects ([`Sink::expected`]) that stays absent past its
//! redial allowance is diagnosed too (one dead before the manager started,
//! restarted or took its domain over never connects, so no event tells);
//! a failure of a child no longer this manager's (it stepped down, the
//! child moved or left) is cleared, not left raised.
//!
//! - [`probe`]: is a host up (ICMP echo, TCP connect).
//! - [`watch`]: the [`Guardian`] of one registry of children.
//! - [`raised`]: the integrity alarms a manager raised, kept across its
//!   restarts (attestation itself is the managers' `attest` modules).
//!
//! Not here: moving a failed domain manager's role (the top manager's
//! reconcile does, with generation fencing), module integrity (the node
//! runtime re-hashes its modules; the domain manager attests them).

pub mod probe;
pub mod raised;
pub mod watch;

pub use watch::{Failure, Guardian, GuardianConfig, Located, Sink};
