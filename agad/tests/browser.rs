//! The web page in a real browser: Debian's headless `chromium`, driven
//! through `chromedriver` (W3C WebDriver over HTTP), against a real
//! hierarchy with `agad mor --web`. It logs in through the form, sees every
//! node green, sees a node that stops turn colour and its alarm appear
//! without a reload (the live event stream), opens a node's chart, and
//! finds that a read-only login cannot write. Screenshots of each step are
//! kept in `target/tmp/browser/` (CI keeps them as artefacts).
//!
//! Needs `chromium` and `chromedriver` (test.sh installs them); fails with
//! a clear message when they are missing.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, WEB_ADMIN, WEB_READER, free_address};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGAD: &str = env!("CARGO_BIN_EXE_agad");
const PATIENCE: Duration = Duration::from_secs(60);

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(json!({})).to_string().as_bytes()),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    value["value"].clone()
}

impl Browser {
    fn start(shots: PathBuf) -> Browser {
        for program in ["chromium", "chromedriver"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "`{program}` is missing: install Debian's chromium and chromium-driver (test.sh does)"
            );
        }
        let port = free_address()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .to_owned();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let ready = || {
            ureq::get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .is_some_and(|t| t.contains("\"ready\":true"))
        };
        while !ready() {
            assert!(start.elapsed() < PATIENCE, "chromedriver never ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let session = call(
            "POST",
            &format!("{base}/session"),
            Some(json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
                }
            } } })),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {session}"))
            .to_owned();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base,
            session: id,
            shots,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn go(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({ "url": url })));
    }

    /// The result of `script` (a function body) in the page.
    fn run(&self, script: &str) -> Value {
        call(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns true in the page; a screenshot if not.
    fn until(&self, what: &str, script: &str) {
        let start = Instant::now();
        while self.run(script) != true {
            let error = self
                .run("const e = document.getElementById('error'); return e ? e.textContent : ''");
            assert!(
                error.as_str().is_none_or(str::is_empty),
                "the page shows an error: {error}"
            );
            if start.elapsed() > PATIENCE {
                self.shot("timeout");
                panic!("{what}: not within {PATIENCE:?} (screenshot timeout.png)");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = call(
            "POST",
            &self.url("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no `{css}` on the page: {found}"))
            .to_owned()
    }

    fn log_in(&self, web: &str, name: &str, password: &str) {
        self.go(&format!("http://{web}/"));
        self.until("the login form", "return location.pathname === '/login'");
        for (field, text) in [("name", name), ("password", password)] {
            let id = self.element(&format!("input[name={field}]"));
            call(
                "POST",
                &self.url(&format!("/element/{id}/value")),
                Some(json!({ "text": text })),
            );
        }
        let button = self.element("form button");
        call("POST", &self.url(&format!("/element/{button}/click")), None);
        self.until(
            "the page after logging in",
            "return location.pathname === '/' && !!document.getElementById('graph')",
        );
    }

    fn shot(&self, name: &str) {
        use base64::Engine;
        let png = call("GET", &self.url("/screenshot"), None);
        if let Some(png) = png.as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(png)
                .unwrap_or_default();
            let path = self.shots.join(format!("{name}.png"));
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(&bytes))
                .unwrap();
            eprintln!("screenshot: {}", path.display());
        }
    }
}

/// Whether the tab of this id is the one shown (a function expression).
const VISIBLE: &str = "(id => getComputedStyle(document.getElementById(id)).display !== 'none')";

/// The fill of each node's circle in the topology graph, by name.
const NODE_FILLS: &str = "return Object.fromEntries([...document.querySelectorAll('#graph g[data-kind=node]')]\
    .map(g => [g.dataset.name, g.querySelector('circle').getAttribute('fill')]))";

#[test]
fn the_page_shows_the_live_network_to_a_logged_in_operator() -> anyhow::Result<()> {
    let (mut d, web, _users) = Deployment::start_with_web(Path::new(AGAD))?;
    d.publish_inspector("cpu-mem")?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[node]]\nname = \"n2\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"n1\", \"n2\"]\n[assign.config]\n\
         period = \"500ms\"\nwindow_secs = 2\n",
    )?;
    let station = d.start_station("s1")?;
    d.start_node("n1", &station)?;
    d.start_node("n2", &station)?;
    d.wait_for("both nodes connected", |d| {
        Ok((d.node_connected("n1")? && d.node_connected("n2")?).then_some(()))
    })?;

    let browser = Browser::start(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser"));
    browser.log_in(&web, WEB_ADMIN.0, WEB_ADMIN.1);
    // Every node green.
    browser.until(
        "both nodes green in the topology",
        &format!(
            "const f = (function() {{ {NODE_FILLS} }})(); return {VISIBLE}('topology') && f.n1 === 'var(--ok)' && f.n2 === 'var(--ok)'"
        ),
    );
    // The deployment's progress above the graph: both nodes run it.
    browser.until(
        "the deployment done on both nodes",
        "return document.getElementById('deployment').textContent.includes('done: 2/2 nodes running')",
    );
    browser.shot("1-topology");

    // n2 stops: the page turns it, without a reload.
    browser
        .run("window.agadLoads = performance.getEntriesByType('navigation').length; return true");
    d.stop("n2")?;
    browser.until(
        "n2 no longer green",
        &format!("const f = (function() {{ {NODE_FILLS} }})(); return f.n2 !== 'var(--ok)' && f.n1 === 'var(--ok)'"),
    );
    browser.until(
        "n2 not connected in the deployment line",
        "const t = document.getElementById('deployment').textContent; return t.includes('1/2 nodes running') && t.includes('1 not connected')",
    );
    browser.shot("2-node-down");
    // Its alarm appears in the alarms tab, as it is raised.
    browser.run("show('alarms'); return true");
    browser.until(
        "n2's alarm in the table",
        &format!("return {VISIBLE}('alarms') && [...document.querySelectorAll('#alarm-rows tr')].some(r => r.textContent.includes('n2') && r.textContent.includes('agad.'))"),
    );
    browser.shot("3-alarms");
    assert_eq!(
        browser
            .run("return performance.getEntriesByType('navigation').length === window.agadLoads"),
        true,
        "the page was not reloaded"
    );

    // A node's chart.
    browser.run("document.getElementById('r-node').value = 'n1'; show('reports'); return true");
    browser.until(
        "n1's charts",
        &format!("return {VISIBLE}('reports') && document.querySelectorAll('#charts svg polyline').length > 0"),
    );
    browser.shot("4-reports");
    // The domain's, every node merged.
    browser
        .run("document.getElementById('r-node').value = 'domain:d1'; loadReports(); return true");
    browser.until(
        "d1's charts",
        "return [...document.querySelectorAll('#charts h3')].some(h => h.textContent.startsWith('domain d1'))",
    );

    // The published modules, where they run.
    browser.run("show('modules'); return true");
    browser.until(
        "cpu-mem in the modules table",
        &format!("return {VISIBLE}('modules') && [...document.querySelectorAll('#module-rows tr')].some(r => r.textContent.includes('cpu-mem') && r.textContent.includes('n1'))"),
    );
    browser.shot("5-modules");

    // A read-only login cannot write.
    let button = browser.element("header form button");
    call(
        "POST",
        &browser.url(&format!("/element/{button}/click")),
        None,
    );
    browser.until(
        "the login form after logging out",
        "return location.pathname === '/login'",
    );
    browser.log_in(&web, WEB_READER.0, WEB_READER.1);
    let status = call(
        "POST",
        &browser.url("/execute/async"),
        Some(json!({
            "script": "const done = arguments[arguments.length - 1]; fetch('/api/v1/acks', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({alarm_id: 'n1/x/1'})}).then(r => done(r.status))",
            "args": []
        })),
    );
    assert_eq!(status, 403, "a read-only login wrote");
    d.check()
}
