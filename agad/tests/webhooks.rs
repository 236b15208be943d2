//! Webhooks from the top manager, on real processes: a real hierarchy
//! (`agad mor --webhooks`, a domain manager, a node with cpu-mem), a CPU
//! hog, and an HTTP receiver in this test that answers 503 before it
//! answers 200. The alarm reaches it in Alertmanager's format after the
//! retries; a clear queued while the receiver refuses survives a `kill -9`
//! of the top manager; an escalated case is sent as `agad.escalated`.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::faults::Hog;
use agad_tests::hierarchy::{Deployment, Options};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A webhook receiver: every body it was sent, with the status it gave.
#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<(u16, Value)>>,
    /// Answer 503 to this many more requests.
    refuse: AtomicUsize,
    /// Answer 503 to everything while set.
    down: AtomicBool,
}

impl Received {
    fn taken(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn refused(&self) -> usize {
        let bodies = self.bodies.lock().unwrap();
        bodies.iter().filter(|(s, _)| *s == 503).count()
    }
}

/// Serves POSTs on a free loopback port until the test ends.
fn receiver() -> (String, Arc<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let received = Arc::new(Received::default());
    let r = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let refuse = r.down.load(Ordering::SeqCst)
                || r.refuse
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            let status = if refuse { 503 } else { 200 };
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            r.bodies.lock().unwrap().push((status, value));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, received)
}

fn alert(body: &Value) -> &Value {
    &body["alerts"][0]
}

#[test]
fn alarms_and_escalations_reach_a_webhook_in_alertmanager_format_through_retries_and_restarts()
-> anyhow::Result<()> {
    let (url, received) = receiver();
    let files = tempfile::tempdir()?;
    let config = files.path().join("webhooks.toml");
    std::fs::write(
        &config,
        format!("[[webhook]]\nname = \"oncall\"\nurl = \"{url}\"\ntimeout = \"2s\"\n"),
    )?;
    let mut d = Deployment::start_with(
        Path::new(env!("CARGO_BIN_EXE_agad")),
        Options::default(),
        &["--webhooks", config.to_str().unwrap()],
    )?;
    d.publish_inspector("cpu-mem")?;
    let s = agad_modules::specialist("disk-usage").unwrap();
    d.publish("disk-usage", s.wasm, s.manifest_toml)?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"n1\"]\n[assign.config]\n\
         period = \"500ms\"\nthreshold = 30\nraise_after = 2\nclear_after = 2\nwindow_secs = 2\n",
    )?;
    // The node's policy lets disk-usage look at no path: the run is
    // refused and the case escalated to a person.
    std::fs::create_dir_all(d.path("rules"))?;
    std::fs::write(
        d.path("rules/cpu.toml"),
        "[[rule]]\nname = \"look-at-var\"\n[rule.match]\nkey = \"cpu.total\"\n\
         [rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"/var\" }\n\
         [rule.escalate]\nto = \"ops-oncall\"\n",
    )?;
    d.agad(&["kb", "apply", "rules"])?;
    let station = d.start_station("s1")?;
    d.start_node("n1", &station)?;

    // The first two attempts are refused: the alarm arrives on the third.
    received.refuse.store(2, Ordering::SeqCst);
    let hog = Hog::start()?;
    let firing = d.wait_for("the CPU alarm at the webhook", |_| {
        Ok(received
            .taken()
            .into_iter()
            .find(|b| alert(b)["labels"]["alertname"] == "cpu.total"))
    })?;
    assert_eq!(firing["version"], "4", "{firing}");
    assert_eq!(firing["status"], "firing", "{firing}");
    assert_eq!(firing["receiver"], "oncall", "{firing}");
    let labels = &alert(&firing)["labels"];
    assert_eq!(
        (&labels["node"], &labels["domain"], &labels["module"]),
        (&"n1".into(), &"d1".into(), &"cpu-mem".into()),
        "{firing}"
    );
    assert_eq!(alert(&firing)["endsAt"], "0001-01-01T00:00:00Z");
    assert!(received.refused() >= 2, "no retry seen");
    assert!(d.log("mor").contains("webhook refused"), "{}", d.log("mor"));

    // The escalated case, as its own alert.
    let escalated = d.wait_for("the escalation at the webhook", |_| {
        Ok(received
            .taken()
            .into_iter()
            .find(|b| alert(b)["labels"]["alertname"] == "agad.escalated"))
    })?;
    assert_eq!(alert(&escalated)["labels"]["escalated_to"], "ops-oncall");
    assert_eq!(alert(&escalated)["labels"]["rule"], "look-at-var");

    // The receiver goes down; the clear is queued and survives a `kill -9`
    // of the top manager, then arrives once the receiver is back.
    received.down.store(true, Ordering::SeqCst);
    drop(hog);
    d.wait_for("the clear refused at least once", |_| {
        let bodies = received.bodies.lock().unwrap();
        Ok(bodies
            .iter()
            .any(|(s, b)| *s == 503 && b["status"] == "resolved")
            .then_some(()))
    })?;
    d.kill9("mor")?;
    // Back up before the restart: only the restarted top manager, reading
    // its queue from disk, can deliver the clear now.
    received.down.store(false, Ordering::SeqCst);
    d.restart_mor()?;
    let resolved = d.wait_for("the clear at the webhook", |_| {
        Ok(received
            .taken()
            .into_iter()
            .find(|b| b["status"] == "resolved"))
    })?;
    assert_eq!(alert(&resolved)["labels"]["alertname"], "cpu.total");
    assert_eq!(
        alert(&resolved)["fingerprint"],
        alert(&firing)["fingerprint"],
        "a clear pairs with its raise"
    );
    // Each alarm was taken once: the cursor moved past it.
    let firings = received
        .taken()
        .iter()
        .filter(|b| b["status"] == "firing" && alert(b)["labels"]["alertname"] == "cpu.total")
        .count();
    assert_eq!(firings, 1);
    d.check()
}

#[test]
fn a_webhooks_file_with_errors_is_refused_with_positions() -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let config = files.path().join("webhooks.toml");
    std::fs::write(&config, "[[webhook]]\nname = \"a\"\nurl = \"ftp://x\"\n")?;
    let out = Deployment::mor_refusing(
        Path::new(env!("CARGO_BIN_EXE_agad")),
        &["--webhooks", config.to_str().unwrap()],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("webhooks.toml:3:7: url `ftp://x`"),
        "{stderr}"
    );
    Ok(())
}
