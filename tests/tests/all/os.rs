//! The `os` host capability reading this machine, checked against what the
//! kernel (and `df`) report independently.

use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use agad_runtime::bindings::os::OperState;
use agad_runtime::host::os::OsProbe;

fn probe() -> OsProbe {
    OsProbe::new().with_module("tests")
}

/// A field of /proc/meminfo, in bytes.
fn meminfo(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .expect("key");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .expect("value")
        .parse()
        .expect("number");
    kib * 1024
}

fn burn_cpu(for_how_long: Duration) {
    let started = Instant::now();
    let mut x: u64 = 1;
    while started.elapsed() < for_how_long {
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }
}

#[test]
fn memory_matches_proc_meminfo() {
    let m = probe().memory();
    assert_eq!(m.total_bytes, meminfo("MemTotal"));
    assert_eq!(m.swap_total_bytes, meminfo("SwapTotal"));
    assert!(m.total_bytes > 0);
    assert!(
        m.available_bytes > 0 && m.available_bytes <= m.total_bytes,
        "{m:?}"
    );
    assert_eq!(m.used_bytes, m.total_bytes - m.available_bytes);
    assert!(m.swap_used_bytes <= m.swap_total_bytes);
}

#[test]
fn cpu_has_one_entry_per_core_and_sees_load() {
    let stat = fs::read_to_string("/proc/stat").expect("stat");
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let mut p = probe();
    burn_cpu(Duration::from_millis(400));
    let usage = p.cpu();
    assert_eq!(usage.per_core_percent.len(), cores);
    assert!(usage.total_percent > 0.0, "we just burnt a core: {usage:?}");
    for v in usage.per_core_percent.iter().chain([&usage.total_percent]) {
        assert!((0.0..=100.0).contains(v), "{usage:?}");
    }
}

#[test]
fn load_average_and_uptime_match_proc() {
    let mut p = probe();
    let l = p.load_average();
    assert!(l.one >= 0.0 && l.five >= 0.0 && l.fifteen >= 0.0, "{l:?}");
    let proc_uptime: f64 = fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .expect("field")
        .parse()
        .expect("number");
    let uptime = p.uptime_secs() as f64;
    assert!(
        (uptime - proc_uptime).abs() <= 2.0,
        "{uptime} vs {proc_uptime}"
    );
}

#[test]
fn hostname_is_the_kernels() {
    let h = probe().hostname();
    assert!(!h.is_empty());
    assert_eq!(
        h,
        fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("hostname")
            .trim()
    );
}

#[test]
fn interfaces_include_loopback_up_with_counters_that_move() {
    let mut p = probe();
    let lo_out = |p: &mut OsProbe| {
        let all = p.interfaces();
        let lo = all.iter().find(|i| i.name == "lo").cloned();
        (all, lo)
    };
    let (all, lo) = lo_out(&mut p);
    let lo = lo.unwrap_or_else(|| panic!("no lo in {all:?}"));
    assert!(
        matches!(lo.oper_state, OperState::Up),
        "lo is {:?}",
        lo.oper_state
    );
    assert_eq!(lo.speed_bps, None, "loopback has no speed");
    assert!(
        matches!(lo.duplex, agad_runtime::bindings::os::Duplex::Unknown),
        "loopback has no duplex: {:?}",
        lo.duplex
    );
    // Every interface the kernel lists, and nothing else.
    let mut kernel: Vec<String> = fs::read_dir("/sys/class/net")
        .expect("sysfs")
        .map(|e| e.expect("entry"))
        // Skip files such as bonding_masters.
        .filter(|e| e.path().join("ifindex").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut ours: Vec<String> = all.iter().map(|i| i.name.clone()).collect();
    kernel.sort();
    ours.sort();
    assert_eq!(ours, kernel);

    // 64 KiB over loopback shows up in both directions of lo.
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let payload = [0x5a_u8; 1024];
    for _ in 0..64 {
        tx.send_to(&payload, rx.local_addr().expect("addr"))
            .expect("send");
    }
    let (_, after) = lo_out(&mut p);
    let after = after.expect("lo");
    assert!(
        after.out_octets >= lo.out_octets + 64 * 1024,
        "{lo:?} -> {after:?}"
    );
    assert!(
        after.in_octets >= lo.in_octets + 64 * 1024,
        "{lo:?} -> {after:?}"
    );
    assert!(
        after.out_packets >= lo.out_packets + 64,
        "{lo:?} -> {after:?}"
    );
}

#[test]
fn processes_by_name_find_this_test_process() {
    let me = std::process::id();
    let comm = fs::read_to_string("/proc/self/comm")
        .expect("comm")
        .trim()
        .to_owned();
    let exe_name = std::env::current_exe()
        .expect("exe")
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let mut p = probe();

    let first = p.processes(vec![comm.clone()]);
    let mine = first
        .iter()
        .find(|q| q.pid == me)
        .unwrap_or_else(|| panic!("{first:?}"));
    assert_eq!(mine.name, comm);
    assert!(mine.rss_bytes > 1024 * 1024, "{mine:?}");
    assert!(mine.cmdline.contains(&exe_name), "{mine:?}");
    assert!(["run", "sleep"].contains(&mine.state.as_str()), "{mine:?}");
    assert!(
        first.iter().all(|q| q.name == comm),
        "only matching names: {first:?}"
    );

    // CPU is measured since this probe's previous listing.
    burn_cpu(Duration::from_millis(500));
    let second = p.processes(vec![comm.clone(), "no-such-process-name".into()]);
    let mine = second.iter().find(|q| q.pid == me).expect("still there");
    assert!(mine.cpu_percent > 10.0, "we burnt half a second: {mine:?}");

    // The kernel truncates names to 15 bytes; the full name still matches.
    if exe_name.len() > 15 {
        let by_exe = p.processes(vec![exe_name.clone()]);
        let mine = by_exe.iter().find(|q| q.pid == me);
        let mine = mine.unwrap_or_else(|| panic!("{exe_name}: {by_exe:?}"));
        assert_eq!(
            mine.name, exe_name,
            "the name asked for, not the truncated one"
        );
    }
    assert!(p.processes(vec!["no-such-process-name".into()]).is_empty());

    // No names: every process.
    let all = p.processes(Vec::new());
    let mine = all.iter().find(|q| q.pid == me).expect("listed");
    if exe_name.len() > 15 {
        assert_eq!(mine.name, exe_name, "full names when listing everything");
    }
    assert!(all.iter().any(|q| q.pid == 1), "pid 1 is listed");
    let on_proc = fs::read_dir("/proc")
        .expect("proc")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
        })
        .count();
    let diff = all.len().abs_diff(on_proc);
    assert!(
        diff <= on_proc / 10 + 5,
        "{} listed, {on_proc} in /proc",
        all.len()
    );
}

#[test]
fn filesystems_match_df() {
    let fss = probe().filesystems(Vec::new());
    assert!(!fss.is_empty());
    for fs in &fss {
        assert!(fs.total_bytes > 0, "{fs:?}");
        assert!(
            fs.used_bytes <= fs.total_bytes && fs.free_bytes <= fs.total_bytes,
            "{fs:?}"
        );
        assert!(!fs.fs_type.is_empty() && !fs.device.is_empty(), "{fs:?}");
    }
    let root = fss
        .iter()
        .find(|f| f.mount_point == "/")
        .unwrap_or_else(|| panic!("{fss:?}"));
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size,used,avail", "/"])
        .output()
        .expect("run df");
    let text = String::from_utf8_lossy(&df.stdout);
    let numbers: Vec<u64> = text
        .lines()
        .nth(1)
        .expect("df row")
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    let (size, used, avail) = (numbers[0], numbers[1], numbers[2]);
    assert_eq!(root.total_bytes, size);
    // Other builds write to this disk meanwhile; allow 1% drift.
    let close = |a: u64, b: u64| a.abs_diff(b) <= size / 100;
    assert!(
        close(root.used_bytes, used),
        "used {} vs df {used}",
        root.used_bytes
    );
    assert!(
        close(root.free_bytes, avail),
        "free {} vs df {avail}",
        root.free_bytes
    );
}
