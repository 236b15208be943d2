//! The top manager's web port on real processes: `agad web user add`
//! writes the users, `agad mor --web` serves the JSON API and Prometheus'
//! `/metrics` over what BIG holds from a real node, and refuses whoever
//! has not logged in.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, WEB_ADMIN, WEB_READER};
use serde_json::Value;
use std::path::Path;

const AGAD: &str = env!("CARGO_BIN_EXE_agad");

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// The `Authorization` header of a login.
fn basic((user, password): (&str, &str)) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// The status and body of an answer.
fn read(mut response: ureq::http::Response<ureq::Body>) -> (u16, String) {
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// GET `url` with an optional login.
fn get(url: &str, login: Option<(&str, &str)>) -> (u16, String) {
    let mut request = agent().get(url);
    if let Some(login) = login {
        request = request.header("Authorization", &basic(login));
    }
    read(request.call().unwrap())
}

/// POST `body` (JSON) to `url` as `login`.
fn post(url: &str, login: (&str, &str), body: &Value) -> (u16, String) {
    read(
        agent()
            .post(url)
            .header("Authorization", &basic(login))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap(),
    )
}

#[test]
fn the_api_and_metrics_serve_big_to_logged_in_users_only() -> anyhow::Result<()> {
    let (mut d, web, _users) = Deployment::start_with_web(Path::new(AGAD))?;
    d.publish_inspector("cpu-mem")?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"n1\"]\n[assign.config]\n\
         period = \"500ms\"\nwindow_secs = 2\nmem_percent = 0.1\nraise_after = 1\n",
    )?;
    let station = d.start_station("s1")?;
    // Live events, subscribed before the node exists: its first alarm
    // arrives on the stream as it is stored.
    let (events_tx, events) = std::sync::mpsc::channel::<String>();
    let stream_url = format!("http://{web}/api/v1/events");
    std::thread::spawn(move || {
        let mut response = agent()
            .get(&stream_url)
            .header("Authorization", &basic(WEB_READER))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        for line in std::io::BufRead::lines(reader) {
            let Ok(line) = line else { return };
            if events_tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    d.start_node("n1", &station)?;
    d.wait_for("a report of n1 in BIG", |d| {
        Ok(d.reports()?.iter().any(|r| r.node == "n1").then_some(()))
    })?;
    let url = |path: &str| format!("http://{web}{path}");
    let bob = Some(WEB_READER);

    // No login, a wrong one, an unknown user: refused, with the challenge.
    for login in [
        None,
        Some(("bob", "wrong password")),
        Some(("mallory", "x")),
    ] {
        let (status, _) = get(&url("/metrics"), login);
        assert_eq!(status, 401, "{login:?}");
        let (status, _) = get(&url("/api/v1/status"), login);
        assert_eq!(status, 401, "{login:?}");
    }

    // Prometheus' view: n1's CPU, labelled by domain and node.
    let (status, text) = get(&url("/metrics"), bob);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("# TYPE agad_cpu_total_percent gauge")
            && text.contains("agad_cpu_total_percent{domain=\"d1\",node=\"n1\",module=\"cpu-mem\""),
        "{text}"
    );

    // The JSON API reads what the CLI reads.
    let (status, body) = get(&url("/api/v1/status"), bob);
    assert_eq!(status, 200, "{body}");
    let status_json: Value = serde_json::from_str(&body)?;
    let cli: Value = serde_json::from_str(&d.agad(&["status", "--json"])?)?;
    assert_eq!(status_json["domains"][0]["domain"], "d1");
    assert_eq!(
        status_json["domains"][0]["domain"],
        cli["domains"][0]["domain"]
    );
    let (status, body) = get(&url("/api/v1/reports?node=n1&limit=3"), bob);
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body)?;
    assert!(
        rows["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.len() <= 3),
        "{rows}"
    );
    // An unknown node is an error, as in the CLI.
    let (status, body) = get(&url("/api/v1/alarms?node=nosuch"), Some(WEB_ADMIN));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nosuch"), "{body}");
    let (status, body) = get(&url("/api/v1/modules"), bob);
    assert_eq!(status, 200, "{body}");
    let modules: Value = serde_json::from_str(&body)?;
    assert_eq!(modules[0]["name"], "cpu-mem", "{modules}");
    assert_eq!(
        modules[0]["sha256"].as_str().map(str::len),
        Some(64),
        "{modules}"
    );
    let (status, body) = get(&url("/api/v1/kb/stats"), bob);
    assert_eq!((status, body.as_str()), (200, "[]"));

    // The alarm came live: `event: alarm`, then its JSON.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut previous = String::new();
    let live = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = events
            .recv_timeout(left)
            .expect("an alarm event on /api/v1/events");
        if previous == "event: alarm" && line.starts_with("data: ") {
            break line;
        }
        previous = line;
    };
    let live: Value = serde_json::from_str(live.trim_start_matches("data: "))?;
    assert_eq!(live["node"], "n1", "{live}");

    // Acknowledging: an admin may, a read-only login may not.
    let alarm = d.wait_for("a raised alarm of n1 in BIG", |d| {
        Ok(d.alarms()?.into_iter().find(|a| a.node == "n1" && a.raised))
    })?;
    let alice = WEB_ADMIN;
    let ack = serde_json::json!({ "alarm_id": alarm.id, "comment": "on it" });
    let (status, _) = post(&url("/api/v1/acks"), WEB_READER, &ack);
    assert_eq!(status, 403);
    let (status, body) = post(&url("/api/v1/acks"), alice, &ack);
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        &url("/api/v1/acks"),
        alice,
        &serde_json::json!({ "alarm_id": "n1/cpu-mem/nosuch" }),
    );
    assert_eq!(status, 404);
    let (_, body) = get(&url("/api/v1/alarms?node=n1"), bob);
    let list: Value = serde_json::from_str(&body)?;
    assert_eq!(list["acks"][&alarm.id]["by"], "alice", "{list}");
    assert_eq!(list["acks"][&alarm.id]["comment"], "on it", "{list}");
    let table = d.agad(&["alarms", "--node", "n1"])?;
    assert!(table.contains("acknowledged by alice"), "{table}");

    // The page: behind the login form and its session cookie, and
    // self-contained.
    let browser: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let location = |r: &ureq::http::Response<ureq::Body>| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let r = browser.get(&url("/")).call()?;
    assert_eq!((r.status().as_u16(), location(&r)), (303, "/login".into()));
    let (status, form) = get(&url("/login"), None);
    assert!(
        status == 200 && form.contains("type=\"password\""),
        "{form}"
    );
    let form_post = |body: &str| {
        browser
            .post(&url("/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
    };
    let r = form_post("name=bob&password=wrong")?;
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (303, "/login?failed".into())
    );
    let r = form_post("name=bob&password=staple+staple")?;
    assert_eq!((r.status().as_u16(), location(&r)), (303, "/".into()));
    let cookie = r.headers()["set-cookie"].to_str()?.to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let (status, page) = read(browser.get(&url("/")).header("Cookie", &session).call()?);
    assert_eq!(status, 200);
    assert!(
        page.contains("/api/v1/events") && !page.contains("https://"),
        "the page reads the API and nothing from elsewhere"
    );
    let (status, _) = read(
        browser
            .get(&url("/api/v1/status"))
            .header("Cookie", &session)
            .call()?,
    );
    assert_eq!(status, 200);
    // bob may only read, whichever way he logged in.
    let (status, _) = read(
        browser
            .post(&url("/api/v1/acks"))
            .header("Cookie", &session)
            .header("Content-Type", "application/json")
            .send(ack.to_string().as_bytes())?,
    );
    assert_eq!(status, 403);
    browser
        .post(&url("/logout"))
        .header("Cookie", &session)
        .send(&[][..])?;
    let r = browser.get(&url("/")).header("Cookie", &session).call()?;
    assert_eq!(r.status().as_u16(), 303, "logged out");

    // Changes through the API: admins only, the same answers as the CLI's.
    let topology = std::fs::read_to_string(d.path("topology.toml")).unwrap_or_default();
    let raw = |path: &str, login: (&str, &str), body: Vec<u8>| {
        read(
            agent()
                .post(&url(path))
                .header("Authorization", &basic(login))
                .send(&body[..])
                .unwrap(),
        )
    };
    let (status, body) = raw(
        "/api/v1/topology?dry_run=true",
        alice,
        topology.clone().into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("topology-diff"), "{body}");
    let (status, _) = raw(
        "/api/v1/topology?dry_run=true",
        WEB_READER,
        topology.into_bytes(),
    );
    assert_eq!(status, 403);
    let (status, body) = raw("/api/v1/topology", alice, b"[[domain]\n".to_vec());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("topology.toml:1:"), "{body}");
    let bundle = std::fs::read(d.path("cpu-mem.agad"))?;
    let (status, body) = raw("/api/v1/modules", alice, bundle);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("already"), "the same bundle again: {body}");
    let (status, body) = raw("/api/v1/modules", alice, b"not a bundle".to_vec());
    assert_eq!(status, 400, "{body}");

    // The description needs no login.
    let (status, body) = get(&url("/api/v1/openapi.json"), None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body)?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/alarms"]["get"].is_object(), "{doc}");
    d.check()
}

#[test]
fn the_web_port_needs_users() -> anyhow::Result<()> {
    let out = Deployment::mor_refusing(Path::new(AGAD), &["--web", "127.0.0.1:0"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web-users.toml") && stderr.contains("agad web user add"),
        "{stderr}"
    );
    Ok(())
}

/// `--web-https`: the web port speaks HTTPS with the top manager's own
/// certificate, issued for the host browsers open (`pki issue --host`). A
/// client trusting the deployment's CA logs in, by name and by address; one
/// that does not trust it, and plain HTTP, get nothing.
#[test]
fn the_web_port_serves_https_with_the_deployments_certificate() -> anyhow::Result<()> {
    use agad_tests::hierarchy::{Options, add_web_user, free_address};
    use std::sync::Arc;
    use ureq::tls::{Certificate, RootCerts, TlsConfig};

    let mut d = Deployment::empty(Path::new(AGAD), Options::default())?;
    d.agad(&["pki", "init", "--dir", "pki"])?;
    d.agad(&["module", "keygen", "--out", "publisher"])?;
    let issued = d.agad(&[
        "pki",
        "issue",
        "--ca-dir",
        "pki",
        "--role",
        "mor",
        "--name",
        "mor",
        "--out",
        "pki",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
    ])?;
    assert!(
        issued.contains("also valid for localhost, 127.0.0.1"),
        "{issued}"
    );
    let refused = d.run(&[
        "pki",
        "issue",
        "--ca-dir",
        "pki",
        "--role",
        "node",
        "--name",
        "n1",
        "--out",
        "pki",
        "--host",
        "not a host",
    ])?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid host \"not a host\""),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let users = d.path("users.toml");
    add_web_user(
        Path::new(AGAD),
        &users,
        WEB_READER.0,
        "read-only",
        WEB_READER.1,
    )?;
    let web = free_address()?;
    let port = web.rsplit(':').next().unwrap().to_owned();
    let listen = free_address()?;
    let users = users.to_str().unwrap().to_owned();
    d.spawn(
        "mor",
        &[
            "mor",
            "--pki",
            "pki",
            "--name",
            "mor",
            "--listen",
            &listen,
            "--data-dir",
            "mor",
            "--trust",
            "publisher.pub",
            "--web",
            &web,
            "--web-users",
            &users,
            "--web-https",
        ],
    )?;

    let ca = std::fs::read(d.path("pki/ca.crt"))?;
    let client = |roots: Vec<Certificate<'static>>| -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(roots)))
                    .build(),
            )
            .build()
            .into()
    };
    let trusting = client(vec![Certificate::from_pem(&ca)?.to_owned()]);
    let status = |agent: &ureq::Agent, url: &str| -> Result<(u16, String), ureq::Error> {
        agent
            .get(url)
            .header("Authorization", &basic(WEB_READER))
            .call()
            .map(read)
    };
    let by_address = format!("https://{web}/api/v1/status");
    let (code, body) = d.wait_for("the HTTPS web port", |_| {
        Ok(status(&trusting, &by_address).ok())
    })?;
    assert_eq!(code, 200, "{body}");
    assert!(
        serde_json::from_str::<Value>(&body)?["domains"].is_array(),
        "{body}"
    );
    let (code, body) = status(
        &trusting,
        &format!("https://localhost:{port}/api/v1/status"),
    )?;
    assert_eq!(code, 200, "{body}");
    // Without a login: refused, over TLS too.
    let (code, _) = read(trusting.get(&by_address).call()?);
    assert_eq!(code, 401);

    // A client that does not trust the deployment's CA gets no answer.
    let stranger = client(Vec::new());
    let err = status(&stranger, &by_address).expect_err("a certificate nobody trusts");
    assert!(
        format!("{err}").to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plain HTTP on the HTTPS port: no HTTP answer.
    assert!(
        !matches!(
            status(&agent(), &format!("http://{web}/api/v1/status")),
            Ok((200, _))
        ),
        "plain HTTP served on the HTTPS port"
    );
    Ok(())
}
