//! The `snmp` host capability against Debian's real snmpd: v2c and v3
//! authPriv requests, walks, and every way a request can fail without the
//! module hanging or trapping.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use agad_runtime::bindings::snmp::{SnmpError, Value, Varbind};
use agad_runtime::host::snmp::{AgentConfig, AuthProtocol, PrivProtocol, SnmpClient};
use agad_tests::snmpd::{
    Snmpd, SnmpdOptions, V3_AUTH_PASSWORD, V3_PRIV_PASSWORD, V3_USER, free_udp_port,
};

const SYS_DESCR: &str = "1.3.6.1.2.1.1.1";
const SYS_DESCR_0: &str = "1.3.6.1.2.1.1.1.0";
const SYS_OBJECT_ID_0: &str = "1.3.6.1.2.1.1.2.0";
const SYS_UPTIME_0: &str = "1.3.6.1.2.1.1.3.0";
const SYS_NAME_0: &str = "1.3.6.1.2.1.1.5.0";
const IF_NUMBER_0: &str = "1.3.6.1.2.1.2.1.0";
const IF_TABLE: &str = "1.3.6.1.2.1.2.2";
const IF_DESCR: &str = "1.3.6.1.2.1.2.2.1.2";

fn client(agents: Vec<AgentConfig>) -> SnmpClient {
    SnmpClient::new(agents.into()).with_module("tests")
}

fn oids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::OctetString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => panic!("expected an octet string, got {other:?}"),
    }
}

fn oid_list(varbinds: &[Varbind]) -> Vec<&str> {
    varbinds.iter().map(|v| v.oid.as_str()).collect()
}

fn arcs(oid: &str) -> Vec<u64> {
    oid.split('.')
        .map(|a| a.parse().expect("numeric arc"))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned()
}

#[test]
fn v2c_get_reads_sys_descr_and_uptime() {
    let snmpd = Snmpd::start();
    let mut c = client(vec![snmpd.v2c_agent()]);
    let got = c
        .get(String::new(), oids(&[SYS_DESCR_0, SYS_UPTIME_0]))
        .expect("get");
    assert_eq!(oid_list(&got), [SYS_DESCR_0, SYS_UPTIME_0]);
    let descr = text(&got[0].value);
    // net-snmp builds sysDescr from uname: sysname, nodename, release, ...
    assert!(descr.starts_with("Linux "), "sysDescr {descr:?}");
    assert!(
        descr.contains(&hostname()),
        "sysDescr {descr:?} names the host"
    );
    let Value::Timeticks(t1) = got[1].value else {
        panic!("sysUpTime is {:?}", got[1].value)
    };

    // The same session, asked again later by name, sees time pass.
    std::thread::sleep(Duration::from_millis(120));
    let again = c
        .get("snmpd-v2c".into(), oids(&[SYS_UPTIME_0]))
        .expect("get by name");
    let Value::Timeticks(t2) = again[0].value else {
        panic!("{:?}", again[0].value)
    };
    assert!(t2 > t1, "sysUpTime went from {t1} to {t2}");

    // An instance that does not exist is a value, not an error (v2c).
    let missing = c
        .get(String::new(), oids(&["1.3.6.1.2.1.1.1.99"]))
        .expect("get");
    assert!(matches!(
        missing[0].value,
        Value::NoSuchInstance | Value::NoSuchObject
    ));
}

#[test]
fn v2c_get_next_returns_the_following_objects() {
    let snmpd = Snmpd::start();
    let mut c = client(vec![snmpd.v2c_agent()]);
    let one = c
        .get_next(String::new(), oids(&[SYS_DESCR]))
        .expect("get-next");
    assert_eq!(oid_list(&one), [SYS_DESCR_0]);
    assert!(text(&one[0].value).starts_with("Linux"));

    let two = c
        .get_next(String::new(), oids(&[SYS_DESCR_0, "1.3.6.1.2.1.1.3"]))
        .expect("get-next of two");
    assert_eq!(oid_list(&two), [SYS_OBJECT_ID_0, SYS_UPTIME_0]);
    // net-snmp's sysObjectID is under NET-SNMP-MIB (enterprises.8072).
    match &two[0].value {
        Value::ObjectId(id) => assert!(id.starts_with("1.3.6.1.4.1.8072."), "{id}"),
        other => panic!("sysObjectID is {other:?}"),
    }
    assert!(matches!(two[1].value, Value::Timeticks(_)));
}

#[test]
fn v2c_get_bulk_honours_non_repeaters_and_repetitions() {
    let snmpd = Snmpd::start();
    let mut c = client(vec![snmpd.v2c_agent()]);
    let got = c
        .get_bulk(String::new(), oids(&[SYS_DESCR]), 0, 3)
        .expect("get-bulk");
    assert_eq!(oid_list(&got), [SYS_DESCR_0, SYS_OBJECT_ID_0, SYS_UPTIME_0]);

    // sysUpTime once, then two rows of ifDescr; `lo` is always ifIndex 1.
    let got = c
        .get_bulk(String::new(), oids(&["1.3.6.1.2.1.1.3", IF_DESCR]), 1, 2)
        .expect("get-bulk with a non-repeater");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].oid, SYS_UPTIME_0);
    assert_eq!(got[1].oid, format!("{IF_DESCR}.1"));
    assert_eq!(text(&got[1].value), "lo");
}

#[test]
fn v2c_walk_of_if_table_lists_every_interface_in_order() {
    let snmpd = Snmpd::start();
    let mut c = client(vec![snmpd.v2c_agent()]);
    let table = c.walk(String::new(), IF_TABLE.into()).expect("walk");
    let root = arcs(IF_TABLE);
    for pair in table.windows(2) {
        assert!(
            arcs(&pair[0].oid) < arcs(&pair[1].oid),
            "not increasing: {pair:?}"
        );
    }
    assert!(
        table.iter().all(|v| arcs(&v.oid).starts_with(&root)),
        "left the subtree"
    );

    let descr: Vec<String> = table
        .iter()
        .filter(|v| v.oid.starts_with(&format!("{IF_DESCR}.")))
        .map(|v| text(&v.value))
        .collect();
    assert!(descr.iter().any(|d| d == "lo"), "ifDescr {descr:?}");
    let if_number = c
        .get(String::new(), oids(&[IF_NUMBER_0]))
        .expect("ifNumber");
    let Value::Integer(n) = if_number[0].value else {
        panic!("{:?}", if_number[0].value)
    };
    assert_eq!(descr.len() as i64, n, "one ifDescr per interface");
    // ifTable has 22 columns; every row shows at least ifIndex..ifOutErrors.
    assert!(table.len() >= descr.len() * 20, "{} objects", table.len());

    // A walk whose root is an instance returns it, like snmpwalk does.
    let leaf = c
        .walk(String::new(), SYS_UPTIME_0.into())
        .expect("walk of a leaf");
    assert_eq!(oid_list(&leaf), [SYS_UPTIME_0]);
    // Nothing under the root is an empty answer, not an error.
    let none = c
        .walk(String::new(), "1.3.6.1.2.1.9999".into())
        .expect("walk of nothing");
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn v3_auth_priv_get_and_walk_work() {
    let snmpd = Snmpd::start();
    let mut c = client(vec![snmpd.v2c_agent(), snmpd.v3_agent()]);
    let got = c
        .get("snmpd-v3".into(), oids(&[SYS_NAME_0, SYS_UPTIME_0]))
        .expect("v3 get");
    assert_eq!(oid_list(&got), [SYS_NAME_0, SYS_UPTIME_0]);
    assert_eq!(text(&got[0].value), hostname());

    // Many requests on one USM session (engine time carried along).
    let system = c
        .walk("snmpd-v3".into(), "1.3.6.1.2.1.1".into())
        .expect("v3 walk");
    assert!(system.len() >= 7, "{system:?}");
    let via_v2c = c
        .walk(String::new(), "1.3.6.1.2.1.1.9".into())
        .expect("v2c walk");
    let via_v3 = c
        .walk("snmpd-v3".into(), "1.3.6.1.2.1.1.9".into())
        .expect("v3 walk");
    assert_eq!(
        oid_list(&via_v2c),
        oid_list(&via_v3),
        "both views show sysORTable"
    );
}

#[test]
fn v3_wrong_passwords_fail_fast_with_an_error() {
    let snmpd = Snmpd::start();
    let mut bad_auth = snmpd.v3_agent();
    bad_auth.name = "bad-auth".into();
    bad_auth.auth_password = Some("not-the-password".into());
    let mut bad_priv = snmpd.v3_agent();
    bad_priv.name = "bad-priv".into();
    bad_priv.priv_password = Some("not-the-password".into());
    let mut c = client(vec![bad_auth.clone(), bad_priv]);
    let limit = Duration::from_millis(bad_auth.timeout_ms * u64::from(bad_auth.retries + 1));

    for agent in ["bad-auth", "bad-priv"] {
        let started = Instant::now();
        let result = c.get(agent.into(), oids(&[SYS_UPTIME_0]));
        let elapsed = started.elapsed();
        assert!(result.is_err(), "{agent}: {result:?}");
        assert!(
            elapsed < limit + Duration::from_millis(500),
            "{agent} took {elapsed:?}; limit {limit:?}"
        );
        eprintln!("{agent}: {result:?} after {elapsed:?}");
    }
    // A wrong auth key is caught on the agent's report: not a timeout.
    match c.get("bad-auth".into(), oids(&[SYS_UPTIME_0])) {
        Err(SnmpError::Transport(msg)) => assert!(msg.contains("authentication"), "{msg}"),
        other => panic!("bad auth password gave {other:?}"),
    }
    // A wrong privacy key decrypts to garbage the agent drops without a
    // report ("error parsing ScopedPDU"); net-snmp's own snmpget times out too.
    let result = c.get("bad-priv".into(), oids(&[SYS_UPTIME_0]));
    assert!(matches!(result, Err(SnmpError::Timeout)), "{result:?}");
}

#[test]
fn v2c_wrong_community_times_out() {
    // net-snmp drops requests with an unknown community without a word.
    let snmpd = Snmpd::start();
    let mut agent = snmpd.v2c_agent();
    agent.community = Some("not-the-community".into());
    agent.timeout_ms = 200;
    agent.retries = 1;
    let mut c = client(vec![agent]);
    let started = Instant::now();
    let result = c.get(String::new(), oids(&[SYS_UPTIME_0]));
    assert!(matches!(result, Err(SnmpError::Timeout)), "{result:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(380),
        "gave up after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_millis(900), "took {elapsed:?}");
}

#[test]
fn an_agent_that_never_answers_times_out_after_every_retry() {
    // Bound but silent: no ICMP "port unreachable" to cut the wait short.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let address = silent.local_addr().expect("addr").to_string();
    let mut v2c = AgentConfig::v2c("silent-v2c", &address, "public");
    v2c.timeout_ms = 300;
    v2c.retries = 2;
    let mut v3 = AgentConfig::v3_auth_priv(
        "silent-v3",
        &address,
        V3_USER,
        (AuthProtocol::Sha, V3_AUTH_PASSWORD),
        (PrivProtocol::Aes, V3_PRIV_PASSWORD),
    );
    v3.timeout_ms = 300;
    v3.retries = 2;
    let mut c = client(vec![v2c, v3]);
    for agent in ["silent-v2c", "silent-v3"] {
        let started = Instant::now();
        let result = c.get(agent.into(), oids(&[SYS_UPTIME_0]));
        let elapsed = started.elapsed();
        assert!(
            matches!(result, Err(SnmpError::Timeout)),
            "{agent}: {result:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(850),
            "{agent} gave up after {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(1500),
            "{agent} took {elapsed:?}"
        );
        // A walk gives up just as surely.
        let walk = c.walk(agent.into(), IF_TABLE.into());
        assert!(matches!(walk, Err(SnmpError::Timeout)), "{agent}: {walk:?}");
    }
    // The silent socket did receive the requests: they were sent, not lost.
    silent.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    assert!(
        silent.recv(&mut buf).is_ok(),
        "no request reached the silent agent"
    );
}

#[test]
fn a_port_nobody_listens_on_is_a_timeout_not_a_hang() {
    let port = free_udp_port(Ipv4Addr::LOCALHOST.into());
    let mut agent = AgentConfig::v2c("nobody", &format!("127.0.0.1:{port}"), "public");
    agent.timeout_ms = 300;
    agent.retries = 1;
    let mut c = client(vec![agent]);
    let started = Instant::now();
    let result = c.get(String::new(), oids(&[SYS_UPTIME_0]));
    assert!(matches!(result, Err(SnmpError::Timeout)), "{result:?}");
    // ICMP port-unreachable may end each attempt early; never later.
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn unknown_agents_and_bad_oids_are_refused_without_a_request() {
    let snmpd = Snmpd::start();
    let mut c = client(vec![snmpd.v2c_agent()]);
    assert_eq!(c.agents(), ["snmpd-v2c"]);
    match c.get("nope".into(), oids(&[SYS_UPTIME_0])) {
        Err(SnmpError::UnknownAgent(name)) => assert_eq!(name, "nope"),
        other => panic!("{other:?}"),
    }
    match c.walk("nope".into(), IF_TABLE.into()) {
        Err(SnmpError::UnknownAgent(name)) => assert_eq!(name, "nope"),
        other => panic!("{other:?}"),
    }
    match c.get(String::new(), oids(&[SYS_UPTIME_0, "1.3.6.x"])) {
        Err(SnmpError::InvalidOid(oid)) => assert_eq!(oid, "1.3.6.x"),
        other => panic!("{other:?}"),
    }
    match c.walk(String::new(), "sysDescr".into()) {
        Err(SnmpError::InvalidOid(oid)) => assert_eq!(oid, "sysDescr"),
        other => panic!("{other:?}"),
    }
    let mut none = client(Vec::new());
    assert!(none.agents().is_empty());
    assert!(matches!(
        none.get(String::new(), oids(&[SYS_UPTIME_0])),
        Err(SnmpError::UnknownAgent(_))
    ));
}

#[test]
fn v3_session_rediscovers_an_agent_that_restarted() {
    let first = Snmpd::start();
    let port = first.address().port();
    let mut c = client(vec![first.v3_agent(), first.v2c_agent()]);
    let before = c
        .get(String::new(), oids(&[SYS_UPTIME_0]))
        .expect("before restart");
    assert_eq!(before.len(), 1);
    drop(first);

    // A new agent on the same port has a new engine id and boots counter.
    let second = Snmpd::start_with(SnmpdOptions {
        port: Some(port),
        ..SnmpdOptions::default()
    });
    let after = c
        .get(String::new(), oids(&[SYS_UPTIME_0]))
        .expect("after restart");
    let Value::Timeticks(t) = after[0].value else {
        panic!("{:?}", after[0].value)
    };
    assert!(t < 10_000, "uptime {t} is the new agent's");
    // And the v2c session, whose socket saw nothing wrong, still works too.
    c.get("snmpd-v2c".into(), oids(&[SYS_UPTIME_0]))
        .expect("v2c after restart");
    drop(second);
}
