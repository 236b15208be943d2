//! `agad demo`: the whole node workflow on this machine — a publisher key,
//! the built-in inspectors signed into bundles, and `agad node run` on them.

use crate::module_cmd::unix_now;
use crate::node_cmd::{RunArgs, run_local};
use agad_protocol::{Bundle, ManifestSpec, SecretKey};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's key, bundles and node data (reused between runs).
    #[arg(long, default_value = "agad-demo")]
    dir: PathBuf,
    /// How often each inspector samples.
    #[arg(long, default_value = "2s")]
    period: String,
    /// Report window: one summary per series per window.
    #[arg(long, default_value = "20")]
    window_secs: u64,
    /// Stop after this long (e.g. 60s); runs until Ctrl-C otherwise.
    #[arg(long = "for", value_parser = |s: &str| agad_runtime::parse_duration(s).ok_or(format!("`{s}` is not a duration")))]
    run_for: Option<Duration>,
}

/// Modules that need an SNMP agent named in a node file; the demo has none.
const NEEDS_AGENT: &[&str] = &["snmp-threshold"];

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let secret_path = args.dir.join("publisher.secret");
    let public_path = args.dir.join("publisher.pub");
    let key = if secret_path.exists() {
        crate::module_cmd::read_secret_key(&secret_path)?
    } else {
        let key = SecretKey::generate();
        crate::module_cmd::write_private(&secret_path, key.to_text().as_bytes())?;
        std::fs::write(&public_path, key.public().to_text())?;
        key
    };
    let d = args.dir.display();
    eprintln!("# what this demo does, as separate commands:");
    eprintln!("#   agad module keygen --out {d}/publisher");
    let mut bundles = Vec::new();
    for builtin in agad_modules::INSPECTORS {
        if NEEDS_AGENT.contains(&builtin.name) {
            continue;
        }
        let spec = ManifestSpec::from_toml(builtin.manifest_toml)
            .with_context(|| format!("built-in manifest of {}", builtin.name))?;
        let wasm_path = args.dir.join(format!("{}.wasm", builtin.name));
        std::fs::write(&wasm_path, builtin.wasm)?;
        let manifest_path = args.dir.join(format!("{}.toml", builtin.name));
        std::fs::write(&manifest_path, builtin.manifest_toml)?;
        let bundle = Bundle::sign(spec, builtin.wasm.to_vec(), &key, unix_now());
        let bundle_path = args.dir.join(format!("{}.agad", builtin.name));
        std::fs::write(&bundle_path, bundle.to_bytes())?;
        eprintln!(
            "#   agad module sign {d}/{0}.wasm --manifest {d}/{0}.toml --key {d}/publisher.secret --out {d}/{0}.agad",
            builtin.name
        );
        bundles.push(bundle_path);
    }
    let config = vec![
        format!("period={}", args.period),
        format!("window_secs={}", args.window_secs),
        "app-watch:processes=sshd,cron,agad".to_owned(),
    ];
    let list: Vec<String> = bundles
        .iter()
        .map(|b| format!("--bundle {}", b.display()))
        .collect();
    let cfg: Vec<String> = config.iter().map(|c| format!("--config {c}")).collect();
    eprintln!(
        "#   agad node run --trust {d}/publisher.pub --data-dir {d}/node {} {}",
        list.join(" "),
        cfg.join(" ")
    );
    eprintln!(
        "# (snmp-threshold needs an SNMP agent in a --node-config file, so the demo leaves it out)"
    );
    run_local(RunArgs {
        bundles,
        config,
        trusted: vec![public_path],
        node_config: None,
        data_dir: Some(args.dir.join("node")),
        run_for: args.run_for,
    })
}
