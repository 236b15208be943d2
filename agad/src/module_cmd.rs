//! `agad module ...`: keys, signing and verification of module bundles.

use agad_protocol::{Bundle, MAX_BUNDLE_BYTES, ManifestSpec, PublicKey, SecretKey};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Create a publisher key pair: <NAME>.secret (keep it private) and <NAME>.pub (give it to nodes).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, default_value = "agad-publisher")]
        out: PathBuf,
    },
    /// Sign a compiled module with its manifest into a bundle (.agad).
    Sign {
        /// The component, built for wasm32-wasip2.
        wasm: PathBuf,
        /// The author's manifest (TOML): name, version, sequence, kind, area, capabilities, limits.
        #[arg(long)]
        manifest: PathBuf,
        /// The publisher's secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the bundle [default: <name>.agad].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a bundle: signature by a trusted key, hash, validity; print its manifest.
    Verify {
        /// The signed bundle (`.agad`) to check.
        bundle: PathBuf,
        /// Public key to trust (repeatable).
        #[arg(long = "trust", required = true)]
        trusted: Vec<PathBuf>,
    },
    /// Create a module project that builds as it is: a sample check, its unit test, a manifest.
    New(crate::module_new::NewArgs),
    /// Build a module project for wasm32-wasip2 and sign it in one step.
    Build(crate::module_new::BuildArgs),
    /// Publish a signed bundle into the top manager's BGC.
    Publish {
        /// The signed bundle (`.agad`, from `agad module sign`).
        bundle: PathBuf,
        #[command(flatten)]
        mor: crate::admin_cmd::MorDir,
        #[command(flatten)]
        wait: crate::admin_cmd::WaitArgs,
    },
}

pub fn run(cmd: ModuleCommand) -> anyhow::Result<()> {
    match cmd {
        ModuleCommand::Publish { bundle, mor, wait } => {
            crate::admin_cmd::publish(&mor.dir, &bundle)?;
            if wait.wait {
                crate::admin_cmd::wait_deployed(&mor.dir, wait.timeout)?;
            }
            Ok(())
        }
        ModuleCommand::Keygen { out } => keygen(&out),
        ModuleCommand::New(args) => crate::module_new::new(args),
        ModuleCommand::Build(args) => crate::module_new::build(args),
        ModuleCommand::Sign {
            wasm,
            manifest,
            key,
            out,
        } => {
            let bundle = sign(&wasm, &manifest, &key)?;
            let out =
                out.unwrap_or_else(|| PathBuf::from(format!("{}.agad", bundle.manifest.name)));
            std::fs::write(&out, bundle.to_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            let m = &bundle.manifest;
            println!(
                "signed {} {} (sequence {}, sha256 {}, key {}) -> {}",
                m.name,
                m.version,
                m.sequence,
                m.sha256_hex(),
                m.signer,
                out.display()
            );
            Ok(())
        }
        ModuleCommand::Verify { bundle, trusted } => {
            let keys = read_public_keys(&trusted)?;
            let b = read_bundle(&bundle)?;
            b.verify(&keys, unix_now())
                .with_context(|| bundle.display().to_string())?;
            let m = &b.manifest;
            println!("{}: OK", bundle.display());
            println!(
                "  module        {} {} (sequence {})",
                m.name, m.version, m.sequence
            );
            println!(
                "  kind, area    {}, {}",
                crate::admin_cmd::word(&m.kind),
                crate::admin_cmd::word(&m.area)
            );
            let caps: Vec<String> = m.capabilities.iter().map(|c| c.to_string()).collect();
            println!("  capabilities  {}", caps.join(", "));
            let bytes = |n: u64| {
                agad_gerente_mor::units::scale_for("B", n as f64).format_with_unit(n as f64)
            };
            println!(
                "  limits        {} of memory, {} ms per call, {} of state",
                bytes(m.limits.max_memory_bytes),
                m.limits.max_time_per_call_ms,
                bytes(m.limits.max_state_bytes)
            );
            println!("  sha256        {}", m.sha256_hex());
            println!("  signer        {}", m.signer);
            println!(
                "  valid         {} to {}",
                crate::admin_cmd::time(m.issued_at.saturating_mul(1000)),
                crate::admin_cmd::time(m.expires_at.saturating_mul(1000))
            );
            Ok(())
        }
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let secret_path = out.with_extension("secret");
    let public_path = out.with_extension("pub");
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!("{} already exists; not overwriting a key", path.display());
        }
    }
    let key = SecretKey::generate();
    write_private(&secret_path, key.to_text().as_bytes())?;
    std::fs::write(&public_path, key.public().to_text())
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!(
        "key {}: secret {}, public {}",
        key.public().id(),
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn sign(wasm: &Path, manifest: &Path, key: &Path) -> anyhow::Result<Bundle> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let spec = ManifestSpec::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}:{e}", manifest.display()))?;
    let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{}: not a WebAssembly file", wasm.display());
    }
    agad_runtime::imports::check_declared(&bytes, &spec.capabilities)
        .map_err(|e| anyhow::anyhow!("{}: {e} in {}", wasm.display(), manifest.display()))?;
    let secret = read_secret_key(key)?;
    Ok(Bundle::sign(spec, bytes, &secret, unix_now()))
}

pub fn read_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    SecretKey::from_text(&text).with_context(|| path.display().to_string())
}

pub fn read_public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            PublicKey::from_text(&text).with_context(|| path.display().to_string())
        })
        .collect()
}

/// Reads a bundle file, refusing one larger than any bundle may be before
/// reading it (and reading no more than that even if it grows meanwhile).
pub fn read_bundle(path: &Path) -> anyhow::Result<Bundle> {
    let bytes = read_bundle_bytes(path)?;
    Bundle::from_bytes(&bytes).with_context(|| path.display().to_string())
}

pub fn read_bundle_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let max = MAX_BUNDLE_BYTES as u64;
    if size > max {
        bail!(
            "{}: {size} bytes; a bundle is at most {MAX_BUNDLE_BYTES} bytes",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!(
            "{}: grew past {MAX_BUNDLE_BYTES} bytes while being read",
            path.display()
        );
    }
    Ok(bytes)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
