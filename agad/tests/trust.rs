//! Trust at every hop, against real `agad` processes: peers that hold a
//! certificate from the deployment's CA and abuse it. A node certificate
//! posing as a parent, a sub-domain station relaying an alarm for another
//! subtree, a self-nested replica from a rogue parent, a frame claiming a
//! collection of 2⁶⁰ elements. Each is refused with the process up and its
//! memory bounded.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_net::{TlsAcceptor, server_config};
use agad_protocol::wire::{self, Control, Enrollment, Message, Queued, Replica, Role, Upward};
use agad_tests::hierarchy::{Deployment, Options, free_address};
use agad_tests::peer::{
    alarm, frame, hello, identity, peak_rss_bytes, raw_client, read_until_closed, runtime, trust,
};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A process that sends this many bytes of frames must stay far below it.
const MEMORY_BOUND_BYTES: u64 = 300 * 1024 * 1024;

fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())
}

#[test]
fn a_node_certificate_is_never_accepted_as_a_parent() -> anyhow::Result<()> {
    let mut d = deployment()?;
    // An `agad dominio` started with a node's certificate: a stolen node
    // key posing as a domain manager.
    d.issue("node", "impostor")?;
    let listen = free_address()?;
    let mor = d.mor_address()?.to_owned();
    d.spawn(
        "impostor",
        &[
            "dominio",
            "--pki",
            "pki",
            "--name",
            "impostor",
            "--mor",
            &mor,
            "--listen",
            &listen,
            "--data-dir",
            "impostor",
            "--trust",
            "publisher.pub",
        ],
    )?;
    d.issue("node", "n1")?;
    d.spawn(
        "n1",
        &[
            "node",
            "--dominio",
            &listen,
            "--pki",
            "pki",
            "--name",
            "n1",
            "--trust",
            "publisher.pub",
            "--data-dir",
            "n1",
            "--keepalive",
            "1s",
        ],
    )?;
    d.wait_for("the node to refuse its impostor parent", |d| {
        Ok(d.log("n1")
            .contains("presented a `node` certificate")
            .then_some(()))
    })?;
    assert!(!d.log("n1").contains("link up"), "{}", d.log("n1"));
    // The node said nothing to it: the impostor never got a hello.
    assert!(
        !d.log("impostor").contains("child registered")
            && !d.log("impostor").contains("not admitted"),
        "{}",
        d.log("impostor")
    );
    Ok(())
}

#[test]
fn a_relayed_alarm_for_another_subtree_is_refused() -> anyhow::Result<()> {
    let mut d = deployment()?;
    let topology = "[[domain]]\nname = \"campus\"\nstations = [\"s1\"]\n\n\
        [[domain]]\nname = \"lab\"\nparent = \"campus\"\nstations = [\"s2\"]\n\n\
        [[node]]\nname = \"n1\"\ndomain = \"campus\"\n\n\
        [[node]]\nname = \"n2\"\ndomain = \"lab\"\n";
    d.apply(topology)?;
    let campus = d.start_station("s1")?;
    // s2 is the lab's enrolled station, but its process is the test: it
    // will relay an alarm about n1, which belongs to campus.
    d.issue("dominio", "s2")?;
    let ticket = d.ticket("s2")?;
    let rt = runtime()?;
    // Asks to join (with its ticket) until campus, once it serves, relays
    // the request to the top manager.
    for attempt in 0.. {
        let first = rt.block_on(async {
            let mut link = raw_client(&d, "s2", &campus).await.unwrap();
            link.write_all(&wire::encode(&hello(Role::Dominio, Some(ticket.clone()))).unwrap())
                .await
                .unwrap();
            read_until_closed(link).await
        });
        assert!(
            matches!(
                first.first(),
                Some(Message::Control(Control::Welcome { enrollment, .. })) if *enrollment != Enrollment::Active
            ),
            "{first:?}"
        );
        if d.agad(&["enroll", "list"])?.contains("s2") {
            break;
        }
        assert!(attempt < 100, "campus never relayed s2's enrollment");
        std::thread::sleep(Duration::from_millis(300));
    }
    d.activate("s2")?;
    let (accepted, refused_rest) = rt.block_on(async {
        // Until the activation reaches campus' replica, s2 is refused.
        let mut link = loop {
            let mut link = raw_client(&d, "s2", &campus).await.unwrap();
            link.write_all(&wire::encode(&hello(Role::Dominio, None)).unwrap())
                .await
                .unwrap();
            let (read, write) = tokio::io::split(link);
            let mut reader = agad_net::FrameReader::new(read);
            match reader.recv().await {
                Ok(Some(Message::Control(Control::Welcome {
                    enrollment: Enrollment::Active,
                    ..
                }))) => break (reader, write),
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        // An alarm about its own node is acknowledged...
        let own = Message::Alarm(Queued {
            seq: 1,
            body: Upward::Alarm(alarm("n2", "n2/rogue/1".into())),
        });
        link.1
            .write_all(&wire::encode(&own).unwrap())
            .await
            .unwrap();
        let mut accepted = false;
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(30), link.0.recv()).await
        {
            if matches!(&m, Message::Control(Control::Ack { seqs }) if seqs.contains(&1)) {
                accepted = true;
                break;
            }
        }
        // ... one about another subtree's node closes the session unacknowledged.
        let foreign = Message::Alarm(Queued {
            seq: 2,
            body: Upward::Alarm(alarm("n1", "n1/rogue/2".into())),
        });
        link.1
            .write_all(&wire::encode(&foreign).unwrap())
            .await
            .unwrap();
        let mut rest = Vec::new();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(30), link.0.recv()).await
        {
            rest.push(m);
        }
        (accepted, rest)
    });
    assert!(accepted, "the station's own alarm was never acknowledged");
    assert!(
        !refused_rest
            .iter()
            .any(|m| matches!(m, Message::Control(Control::Ack { seqs }) if seqs.contains(&2))),
        "{refused_rest:?}"
    );
    // Logged when the session has ended: just after the connection closed.
    d.wait_for("the refusal in s1's log", |d| {
        Ok(d.log("s1")
            .contains("outside the station's sub-domain")
            .then_some(()))
    })?;
    d.wait_for("the lab's own alarm in BIG", |d| {
        Ok(d.alarms()?.into_iter().find(|a| a.id == "n2/rogue/1"))
    })?;
    assert!(
        !d.alarms()?.iter().any(|a| a.id == "n1/rogue/2"),
        "a forged alarm reached BIG"
    );
    d.check()?;
    Ok(())
}

#[test]
fn a_frame_claiming_a_huge_collection_is_refused_with_the_manager_up() -> anyhow::Result<()> {
    let mut d = deployment()?;
    let s1 = d.start_station("s1")?;
    d.issue("node", "greedy")?;
    // A hello whose module list claims 2⁶⁰ entries, and then ends.
    let honest = wire::encode_value(&hello(Role::Node, None));
    // The encoding ends with the list's length (0) and keepalive_ms (1000,
    // three bytes as a varint: 251 then u16): replace both with a length
    // of 2⁶⁰ (253 then u64, little-endian) and nothing after it.
    let mut greedy = honest[..honest.len() - 4].to_vec();
    greedy.push(253);
    greedy.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let rt = runtime()?;
    let answers = rt.block_on(async {
        let mut link = raw_client(&d, "greedy", &s1).await.unwrap();
        link.write_all(&frame(&greedy)).await.unwrap();
        read_until_closed(link).await
    });
    assert!(answers.is_empty(), "{answers:?}");
    d.wait_for("the refusal in the manager's log", |d| {
        Ok(d.log("s1").contains("malformed frame").then_some(()))
    })?;
    d.check()?;
    let pid = d.pid("s1")?;
    let peak = peak_rss_bytes(pid)?;
    assert!(peak < MEMORY_BOUND_BYTES, "{peak}");
    // And it still answers an honest hello.
    let answers = rt.block_on(async {
        let mut link = raw_client(&d, "greedy", &s1).await.unwrap();
        link.write_all(&wire::encode(&hello(Role::Node, None)).unwrap())
            .await
            .unwrap();
        read_until_closed(link).await
    });
    assert!(
        matches!(
            answers.first(),
            Some(Message::Control(Control::Welcome { .. }))
        ),
        "{answers:?}"
    );
    Ok(())
}

#[test]
fn a_self_nested_replica_from_a_rogue_parent_is_refused_with_the_station_up() -> anyhow::Result<()>
{
    let mut d = deployment()?;
    d.issue("dominio", "s3")?;
    let rt = runtime()?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let rogue = listener.local_addr()?.to_string();
    // The rogue parent holds the top manager's own certificate.
    let acceptor = TlsAcceptor::from(server_config(&identity(&d, "mor")?, &trust(&d)?)?);
    d.spawn(
        "s3",
        &[
            "dominio",
            "--pki",
            "pki",
            "--name",
            "s3",
            "--mor",
            &rogue,
            "--listen",
            &free_address()?,
            "--data-dir",
            "s3",
            "--trust",
            "publisher.pub",
            "--keepalive",
            "1s",
        ],
    )?;
    let nested = nested_replicate(1000);
    rt.block_on(async {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut link = acceptor.accept(tcp).await.unwrap();
        let (read, mut write) = tokio::io::split(&mut link);
        let mut reader = agad_net::FrameReader::new(read);
        assert!(matches!(
            reader.recv().await.unwrap(),
            Some(Message::Control(Control::Hello { .. }))
        ));
        for m in [
            Message::Control(Control::Welcome {
                enrollment: Enrollment::Active,
                reason: String::new(),
                activation: None,
            }),
            Message::Control(Control::AssignDomain {
                domain: "d".into(),
                generation: 1,
            }),
        ] {
            write.write_all(&wire::encode(&m).unwrap()).await.unwrap();
        }
        write.write_all(&frame(&nested)).await.unwrap();
        // The station drops the link.
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_secs(30), reader.recv()).await
        {}
    });
    d.wait_for("the refusal in the station's log", |d| {
        Ok(d.log("s3").contains("nested deeper").then_some(()))
    })?;
    d.check()?;
    let pid = d.pid("s3")?;
    let peak = peak_rss_bytes(pid)?;
    assert!(peak < MEMORY_BOUND_BYTES, "{peak}");
    // It comes back to its parent, as after any broken link.
    rt.block_on(async {
        let accepted = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await;
        assert!(accepted.is_ok(), "the station did not reconnect");
    });
    Ok(())
}

/// `Replicate` of a replica nested `depth` levels deep, encoded by hand:
/// building the value and encoding it would recurse as deep.
fn nested_replicate(depth: usize) -> Vec<u8> {
    let leaf = Replica {
        version: 1,
        topology: agad_protocol::topology::DomainTopology {
            domain: agad_protocol::topology::Domain {
                name: "d".into(),
                parent: None,
                stations: Vec::new(),
                report_window_ms: 1000,
            },
            nodes: Vec::new(),
            links: Vec::new(),
            assignments: Vec::new(),
            subdomains: Vec::new(),
        },
        modules: Vec::new(),
        rules: Vec::new(),
        members: Vec::new(),
        subdomains: Vec::new(),
        moved: Vec::new(),
    };
    let whole = wire::encode_value(&Message::Control(Control::Replicate(Box::new(
        leaf.clone(),
    ))));
    let one = wire::encode_value(&leaf);
    // A replica's last field is its sub-domains: `0` (none) ends `one`.
    let (fields, none) = one.split_at(one.len() - 1);
    assert_eq!(none, [0]);
    let head = &whole[..whole.len() - one.len()];
    let mut out = head.to_vec();
    for _ in 0..depth {
        out.extend_from_slice(fields);
        out.push(1);
    }
    out.extend_from_slice(&one);
    out
}
