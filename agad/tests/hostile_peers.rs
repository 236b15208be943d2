//! Peers that hold a certificate of the deployment and abuse it, against a
//! real `agad dominio` (and a real top manager and nodes): garbage that
//! would have written megabytes of log per frame, a thousand idle
//! connections of one never-enrolled certificate, a node claiming another
//! node's alarm ids, a second connection with a node's certificate. Each
//! is contained: the manager stays up, its log and memory stay bounded, and
//! the real nodes get in and lose nothing.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_protocol::wire::{self, Control, Enrollment, Message, Queued, Role, Upward};
use agad_tests::hierarchy::{Deployment, Options, alarm_ids};
use agad_tests::peer::{
    alarm, hello, packed_frame, peak_rss_bytes, raw_client, read_until_closed, runtime,
};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())
}

/// One domain `d1` served by `s1` with `nodes`, running `cpu-mem` with a
/// threshold every node crosses (so each raises an alarm at once).
fn alarming_domain(d: &Deployment, nodes: &[&str]) -> anyhow::Result<()> {
    d.publish_inspector("cpu-mem")?;
    let mut t =
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n".to_owned();
    for n in nodes {
        t += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\n");
    }
    t += "\n[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n[assign.config]\nperiod = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n";
    d.apply(&t)?;
    Ok(())
}

fn log_len(d: &Deployment, name: &str) -> usize {
    d.log(name).len()
}

/// Frames an attacker sends in place of (or as) its hello: each of the
/// first three once made a manager write megabytes (a deflate error carried
/// all it had inflated; decoded messages were printed whole).
fn poison() -> Vec<Vec<u8>> {
    // 35 KB that inflate to 30 MB of zeros, then a broken stream.
    let mut bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 30 << 20], 1);
    bomb.truncate(bomb.len() - 8);
    bomb.extend_from_slice(&[0xff; 8]);
    // A well-formed alarm with a 60 KB message, where a hello is expected.
    let mut loud = alarm("intruder", "intruder/rogue/1".into());
    loud.message = "\n\u{1b}[2J forged log line ".repeat(2_500);
    let loud = wire::encode_value(&Message::Alarm(Queued {
        seq: 1,
        body: Upward::Alarm(loud),
    }));
    // A bincode string of 60 KB where a variant index belongs.
    let junk = [vec![0u8], vec![0xfc], "x".repeat(60_000).into_bytes()].concat();
    vec![
        packed_frame(1, &bomb),
        packed_frame(0, &loud),
        packed_frame(0, &junk),
        // A proper hello: each asks for enrollment, which the station
        // passes up to the top manager only a few times.
        wire::encode(&hello(Role::Node, None)).unwrap(),
    ]
}

#[test]
fn garbage_from_a_never_enrolled_certificate_costs_a_bounded_log() -> anyhow::Result<()> {
    let mut d = deployment()?;
    // The intruder is a node of the topology that was never enrolled; the
    // outsider is not even in the topology.
    alarming_domain(&d, &["intruder"])?;
    let s1 = d.start_station("s1")?;
    d.issue("node", "intruder")?;
    d.issue("node", "outsider")?;
    d.wait_for("s1 serving d1", |d| {
        Ok(d.log("s1").contains("replica in force").then_some(()))
    })?;
    let before = (log_len(&d, "s1"), log_len(&d, "mor"));
    let frames = poison();
    let sent: usize = 300 * frames.iter().map(Vec::len).sum::<usize>() / frames.len();
    runtime()?.block_on(async {
        for i in 0..300 {
            let Ok(mut link) = raw_client(&d, "intruder", &s1).await else {
                continue;
            };
            let _ = link.write_all(&frames[i % frames.len()]).await;
            let _ = link.flush().await;
            read_until_closed(link).await;
        }
        for _ in 0..20 {
            let Ok(mut link) = raw_client(&d, "outsider", &s1).await else {
                continue;
            };
            let _ = link
                .write_all(&wire::encode(&hello(Role::Node, None)).unwrap())
                .await;
            read_until_closed(link).await;
        }
    });
    d.check()?;
    let grown = (log_len(&d, "s1") - before.0, log_len(&d, "mor") - before.1);
    // 300 sessions of one certificate (and 20 of another): a burst of
    // lines each, then counts.
    assert!(
        grown.0 < 16 * 1024 && grown.1 < 16 * 1024,
        "{sent} bytes sent made the logs grow by {grown:?} bytes:\n{}",
        &d.log("s1")[before.0..]
    );
    let tail = &d.log("s1")[before.0..];
    assert!(!tail.contains("forged log line"), "{tail}");
    let mor_tail = &d.log("mor")[before.1..];
    let relayed = mor_tail.matches("enrollment request relayed").count();
    assert!(
        (1..=3).contains(&relayed),
        "{relayed} enrollment requests passed up for 75 hellos:\n{mor_tail}"
    );
    // A name outside the domain is refused by the station itself: it never
    // reaches the top manager, which would take it as the station's fault.
    assert!(
        !mor_tail.contains("outsider") && !mor_tail.contains("lost"),
        "{mor_tail}"
    );
    let ended = tail
        .lines()
        .filter(|l| l.contains("name=intruder") && l.contains("session ended"))
        .count();
    assert!(
        (1..=21).contains(&ended),
        "{ended} session lines for 300 sessions:\n{tail}"
    );
    Ok(())
}

#[test]
fn a_thousand_idle_connections_of_one_certificate_do_not_lock_real_nodes_out() -> anyhow::Result<()>
{
    let mut d = deployment()?;
    alarming_domain(&d, &["n1"])?;
    let s1 = d.start_station("s1")?;
    d.issue("node", "intruder")?;
    let pid = d.pid("s1")?;
    let rt = runtime()?;
    let idle_rss = peak_rss_bytes(pid)?;
    // Open 1,000 TLS connections and keep them, sending nothing.
    let (mut held, mut refused) = (Vec::new(), 0);
    rt.block_on(async {
        for _ in 0..1_000 {
            match raw_client(&d, "intruder", &s1).await {
                Ok(link) => held.push(link),
                Err(_) => refused += 1,
            }
        }
    });
    // A real node enrolls and is admitted while they are open.
    d.start_node("n1", &s1)?;
    d.wait_for("n1's alarm in BIG during the attack", |d| {
        Ok(d.alarms()?.into_iter().find(|a| a.node == "n1"))
    })?;
    // The manager kept at most two of them (the certificate's share of the
    // waiting room) and closed the rest.
    let open = rt.block_on(async {
        let mut open = 0;
        for link in held {
            let mut reader = agad_net::FrameReader::new(link);
            if tokio::time::timeout(Duration::from_millis(20), reader.recv())
                .await
                .is_err()
            {
                open += 1;
            }
        }
        open
    });
    assert!(
        open <= 2,
        "{open} idle connections kept, {refused} refused at the handshake"
    );
    d.check()?;
    let peak = peak_rss_bytes(pid)?;
    assert!(
        peak <= 2 * idle_rss.max(32 << 20),
        "peak {peak} bytes, idle {idle_rss}"
    );
    Ok(())
}

#[test]
fn a_node_cannot_claim_another_node_s_alarm_ids() -> anyhow::Result<()> {
    let mut d = deployment()?;
    alarming_domain(&d, &["n1", "n2"])?;
    let s1 = d.start_station("s1")?;
    // n1 is a real, enrolled node gone rogue: it holds its own certificate.
    d.issue("node", "n1")?;
    let ticket = d.ticket("n1")?;
    let rt = runtime()?;
    // What s1 answers a hello of n1's (with `ticket`, if any).
    let welcome = |d: &Deployment, ticket: Option<String>| {
        rt.block_on(async {
            let mut link = raw_client(d, "n1", &s1).await.unwrap();
            let hello = hello(Role::Node, ticket);
            link.write_all(&wire::encode(&hello).unwrap())
                .await
                .unwrap();
            match read_until_closed(link).await.first() {
                Some(Message::Control(Control::Welcome { enrollment, .. })) => Some(*enrollment),
                _ => None,
            }
        })
    };
    d.wait_for("n1's ticket accepted", |d| {
        Ok((welcome(d, Some(ticket.clone())) == Some(Enrollment::Inactive)).then_some(()))
    })?;
    d.activate("n1")?;
    // The activation reaches s1 with the next replica.
    d.wait_for("n1 active at s1", |d| {
        Ok((welcome(d, None) == Some(Enrollment::Active)).then_some(()))
    })?;
    // It pre-claims n2's first alarm ids, as alarms about n1 and about n2.
    let answers = rt.block_on(async {
        let mut answers = Vec::new();
        for node in ["n1", "n2"] {
            let mut link = raw_client(&d, "n1", &s1).await.unwrap();
            let mut frames = wire::encode(&hello(Role::Node, None)).unwrap();
            for seq in 0..200u64 {
                let body = Upward::Alarm(alarm(node, format!("n2/cpu-mem/{seq}")));
                frames.extend(wire::encode(&Message::Alarm(Queued { seq, body })).unwrap());
            }
            link.write_all(&frames).await.unwrap();
            answers.push(read_until_closed(link).await);
        }
        answers
    });
    for got in &answers {
        assert!(
            matches!(
                got.first(),
                Some(Message::Control(Control::Welcome {
                    enrollment: Enrollment::Active,
                    ..
                }))
            ),
            "{got:?}"
        );
        assert!(
            !got.iter()
                .any(|m| matches!(m, Message::Control(Control::Ack { .. }))),
            "a claimed id was acknowledged: {got:?}"
        );
    }
    // Each refusal is logged (once its session has ended: just after the
    // connection closed).
    d.wait_for("both refusals in s1's log", |d| {
        let log = d.log("s1");
        Ok(
            (log.contains("alarm id that is not") && log.contains("alarm about another node"))
                .then_some(()),
        )
    })?;
    // n2's own alarms, with exactly those ids, arrive. (Its first alarm's
    // number depends on what it queued before: a report may come first.)
    d.start_node("n2", &s1)?;
    let first = d.wait_for("n2's first alarm in BIG", |d| {
        let big = alarm_ids(&d.alarms()?);
        Ok(d.queued_alarm_ids("n2")
            .into_iter()
            .find(|id| big.contains(id)))
    })?;
    let seq: u64 = first.rsplit('/').next().unwrap().parse()?;
    assert!(seq < 200, "{first} was one of the ids n1 tried to claim");
    d.check()?;
    Ok(())
}

#[test]
fn a_second_connection_with_a_node_s_certificate_never_orphans_the_node() -> anyhow::Result<()> {
    let mut d = deployment()?;
    alarming_domain(&d, &["n1"])?;
    let s1 = d.start_station("s1")?;
    d.start_node("n1", &s1)?;
    let connected = |d: &Deployment| -> anyhow::Result<Option<()>> {
        let state = d.component_state(&serde_json::json!({"node": {"name": "n1"}}))?;
        Ok(state.filter(|s| s.get("connected").is_some()).map(|_| ()))
    };
    d.wait_for("n1 connected", connected)?;
    let redeploys = |d: &Deployment| d.log("n1").matches("deployment").count();
    let before = redeploys(&d);
    // Someone with n1's certificate connects: it replaces n1's session (the
    // documented rule), which is logged; then it goes away.
    let answers = runtime()?.block_on(async {
        let mut link = raw_client(&d, "n1", &s1).await.unwrap();
        link.write_all(&wire::encode(&hello(Role::Node, None)).unwrap())
            .await
            .unwrap();
        let mut reader = agad_net::FrameReader::new(link);
        let first = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await;
        drop(reader);
        first
    });
    assert!(
        matches!(
            answers,
            Ok(Ok(Some(Message::Control(Control::Welcome {
                enrollment: Enrollment::Active,
                ..
            }))))
        ),
        "{answers:?}"
    );
    d.wait_for("the replacement in the station's log", |d| {
        Ok(d.log("s1").contains("replaces its session").then_some(()))
    })?;
    // The real node comes back, is connected, and still gets deployments.
    d.wait_for("n1 connected again", connected)?;
    d.wait_for("n1 deployed again after reconnecting", |d| {
        Ok((redeploys(d) > before).then_some(()))
    })?;
    d.check()?;
    Ok(())
}
