//! The test network itself (`agad_tests::network`): separate hosts that
//! reach each other through the switch, a host whose link is down is cut
//! off until it is up again, and packet loss is real loss. Needs root.

use agad_tests::network::Network;

#[test]
fn hosts_reach_each_other_and_a_downed_link_cuts_one_off() -> anyhow::Result<()> {
    let net = Network::new(&["a", "b", "c"])?;
    assert_eq!(net.host("a")?.address().to_string(), "10.79.0.1");
    assert_eq!(net.host("c")?.address().to_string(), "10.79.0.3");
    net.ping("a", "b")?;
    net.ping("c", "a")?;
    // Each host is its own namespace: its interface and nothing of the others.
    let links = net.host("b")?.run("ip", &["-o", "link"])?;
    assert!(links.contains("eth0") && !links.contains("port"), "{links}");

    net.link_down("b")?;
    assert!(!net.reachable("a", "b")?, "b's link is down");
    assert!(!net.reachable("b", "c")?, "b's link is down");
    net.ping("a", "c")?;
    net.link_up("b")?;
    net.ping("a", "b")?;
    net.ping("b", "c")?;
    Ok(())
}

#[test]
fn total_loss_drops_everything_and_removing_it_heals() -> anyhow::Result<()> {
    let net = Network::new(&["a", "b"])?;
    net.ping("a", "b")?;
    net.set_loss("b", 100)?;
    assert!(!net.reachable("a", "b")?);
    assert!(!net.reachable("b", "a")?);
    // Loopback is spared: a host's own processes still talk to each other.
    let local = net
        .host("b")?
        .run("ping", &["-c", "1", "-W", "1", "127.0.0.1"]);
    assert!(local.is_ok(), "{local:?}");
    net.set_loss("b", 0)?;
    net.ping("a", "b")?;
    Ok(())
}

#[test]
fn namespaces_are_deleted_with_the_network() -> anyhow::Result<()> {
    let names: Vec<String> = {
        let net = Network::new(&["x"])?;
        vec![net.host("x")?.namespace().to_owned()]
    };
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for name in names {
        assert!(!list.contains(&name), "{name} still exists: {list}");
    }
    Ok(())
}
