//! `agad module new` and `agad module build`: a module author's project,
//! from nothing to a signed bundle.
//!
//! `new` writes a project that builds as it is, outside the repository: a
//! sample check with its unit test, and a manifest declaring the
//! capabilities the SDK needs and the module's configuration schema. The
//! templates are the files under `agad/templates/`, compiled into the
//! binary. A Rust project depends on the SDK crate (`agad-sdk`) by path to
//! the repository this `agad` was built from (or `--sdk`); a Python project
//! carries its own copy of `wit/` and of `python/agad_sdk.py`.
//!
//! `build` compiles the project for `wasm32-wasip2` (cargo, or
//! componentize-py for Python) and signs it with the manifest, as
//! `agad module sign` does, printing the bundle's size, SHA-256 and
//! capabilities.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-py release Python modules are built and measured with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Resident, ticked on its period: alarms and report summaries.
    Inspector,
    /// Run once with arguments when an alarm calls for it: a diagnosis.
    Specialist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// The module's name (lower-case letters, digits, `-`; unique in a deployment).
    pub name: String,
    /// What the module is.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The language it is written in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Where to create the project [default: ./<NAME>]; must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The AGAD SDK a Rust project depends on: a path to the repository (or
    /// its `sdk/` folder), or a git URL [default: the repository this agad
    /// was built from].
    #[arg(long, value_name = "PATH|GIT-URL")]
    pub sdk: Option<String>,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The project [default: the current directory].
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The publisher's secret key file (from `agad module keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Where to write the bundle [default: <DIR>/<name>.agad].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The repository this binary was built from, if it is still there.
fn built_from() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    repo.join("sdk/Cargo.toml")
        .is_file()
        .then(|| repo.to_path_buf())
}

/// The `agad-sdk = ...` line of a Rust project's Cargo.toml.
fn sdk_dependency(sdk: Option<&str>, features: &str) -> anyhow::Result<String> {
    let is_git = |s: &str| {
        ["https://", "http://", "ssh://", "git@", "git://", "file://"]
            .iter()
            .any(|p| s.starts_with(p))
    };
    let source = match sdk {
        Some(url) if is_git(url) => format!("git = {}", toml_string(url)),
        Some(path) => {
            let path = Path::new(path);
            let path = if path.join("sdk/Cargo.toml").is_file() {
                path.join("sdk")
            } else if path.join("Cargo.toml").is_file() {
                path.to_path_buf()
            } else {
                bail!(
                    "--sdk {}: neither an AGAD repository nor its sdk/ folder (no Cargo.toml)",
                    path.display()
                );
            };
            let path = path
                .canonicalize()
                .with_context(|| format!("--sdk {}", path.display()))?;
            format!("path = {}", toml_string(&path.to_string_lossy()))
        }
        None => match built_from() {
            Some(repo) => format!(
                "path = {}",
                toml_string(&repo.join("sdk").to_string_lossy())
            ),
            None => bail!(
                "this agad was built from {}, which is gone: say where the AGAD SDK is with \
                 --sdk PATH (a checkout of the repository) or --sdk GIT-URL",
                env!("CARGO_MANIFEST_DIR")
            ),
        },
    };
    Ok(format!("agad-sdk = {{ {source}{features} }}"))
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The WIT package, for Python projects (componentize-py reads it).
const WIT: &[(&str, &str)] = &[
    ("clock.wit", include_str!("../../wit/clock.wit")),
    ("disk.wit", include_str!("../../wit/disk.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("os.wit", include_str!("../../wit/os.wit")),
    ("probe.wit", include_str!("../../wit/probe.wit")),
    ("service.wit", include_str!("../../wit/service.wit")),
    ("snmp.wit", include_str!("../../wit/snmp.wit")),
    ("state.wit", include_str!("../../wit/state.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("worlds.wit", include_str!("../../wit/worlds.wit")),
];

const GITIGNORE: &str = include_str!("../templates/gitignore");

/// The files of a new project, paths relative to its folder.
fn project_files(args: &NewArgs) -> anyhow::Result<Vec<(String, String)>> {
    let name = &args.name;
    let fill = |text: &str| text.replace("{{name}}", name);
    let mut files = vec![(".gitignore".to_owned(), GITIGNORE.to_owned())];
    match (args.lang, args.kind) {
        (Lang::Rust, kind) => {
            let (cargo, lib, manifest, features) = match kind {
                Kind::Inspector => (
                    include_str!("../templates/rust-inspector/Cargo.toml"),
                    include_str!("../templates/rust-inspector/lib.rs"),
                    include_str!("../templates/rust-inspector/manifest.toml"),
                    "",
                ),
                Kind::Specialist => (
                    include_str!("../templates/rust-specialist/Cargo.toml"),
                    include_str!("../templates/rust-specialist/lib.rs"),
                    include_str!("../templates/rust-specialist/manifest.toml"),
                    ", features = [\"specialist\"]",
                ),
            };
            let dependency = sdk_dependency(args.sdk.as_deref(), features)?;
            let cargo = fill(cargo)
                .replace("{{sdk_dependency}}", &dependency)
                .replace("{{sdk_dependency_specialist}}", &dependency);
            files.push(("Cargo.toml".into(), cargo));
            files.push(("src/lib.rs".into(), fill(lib)));
            files.push(("manifest.toml".into(), fill(manifest)));
            files.push((
                "rust-toolchain.toml".into(),
                "[toolchain]\nchannel = \"stable\"\ntargets = [\"wasm32-wasip2\"]\n".into(),
            ));
        }
        (Lang::Python, kind) => {
            let (app, test, manifest) = match kind {
                Kind::Inspector => (
                    include_str!("../templates/python-inspector/app.py"),
                    include_str!("../templates/python-inspector/test_app.py"),
                    include_str!("../templates/python-inspector/manifest.toml"),
                ),
                Kind::Specialist => (
                    include_str!("../templates/python-specialist/app.py"),
                    include_str!("../templates/python-specialist/test_app.py"),
                    include_str!("../templates/python-specialist/manifest.toml"),
                ),
            };
            files.push(("app.py".into(), fill(app)));
            files.push(("test_app.py".into(), fill(test)));
            files.push(("manifest.toml".into(), fill(manifest)));
            files.push((
                "agad_sdk.py".into(),
                include_str!("../../python/agad_sdk.py").to_owned(),
            ));
            for (file, text) in WIT {
                files.push((format!("wit/{file}"), (*text).to_owned()));
            }
        }
    }
    Ok(files)
}

/// `agad module new`.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    agad_protocol::validate_module_name(&args.name)
        .map_err(|e| anyhow::anyhow!("module name `{}`: {e}", args.name))?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already exists and is not empty; not overwriting",
            dir.display()
        );
    }
    let files = project_files(&args)?;
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (kind, lang) = (
        match args.kind {
            Kind::Inspector => "inspector",
            Kind::Specialist => "specialist",
        },
        match args.lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        },
    );
    println!("created {lang} {kind} `{}` in {}", args.name, dir.display());
    let test = match args.lang {
        Lang::Rust => "cargo test",
        Lang::Python => "python3 -m unittest",
    };
    println!("  test it:   cd {} && {test}", dir.display());
    println!(
        "  build it:  agad module build --dir {} --key publisher.secret",
        dir.display()
    );
    let run = match args.kind {
        Kind::Inspector => "--config threshold=1 --config raise_after=1",
        Kind::Specialist => "--arg limit=50",
    };
    println!(
        "  run it:    agad node run --bundle {}.agad --trust publisher.pub {run}",
        dir.join(&args.name).display()
    );
    println!("  guide:     docs/modules.md in the AGAD repository");
    Ok(())
}

/// `agad module build`.
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "cannot read {} (is {} a module project?)",
            manifest.display(),
            dir.display()
        )
    })?;
    let spec = agad_protocol::ManifestSpec::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}:{e}", manifest.display()))?;
    // Read before building: a missing key should not cost a build.
    crate::module_cmd::read_secret_key(&args.key)?;
    let wasm = if dir.join("Cargo.toml").is_file() {
        build_rust(dir)?
    } else if dir.join("app.py").is_file() {
        build_python(dir, &spec.name, spec.kind)?
    } else {
        bail!(
            "{}: neither Cargo.toml (Rust) nor app.py (Python); `agad module new` makes a project",
            dir.display()
        );
    };
    let bundle = crate::module_cmd::sign(&wasm, &manifest, &args.key)?;
    let out = args
        .out
        .unwrap_or_else(|| dir.join(format!("{}.agad", bundle.manifest.name)));
    let bytes = bundle.to_bytes();
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let m = &bundle.manifest;
    let caps: Vec<String> = m.capabilities.iter().map(|c| c.to_string()).collect();
    println!(
        "built {} {} (sequence {}) -> {}",
        m.name,
        m.version,
        m.sequence,
        out.display()
    );
    println!(
        "  size          {} bytes ({:.1} KiB; the component {} bytes)",
        bytes.len(),
        bytes.len() as f64 / 1024.0,
        bundle.wasm.len()
    );
    println!("  sha256        {}", m.sha256_hex());
    println!("  capabilities  {}", caps.join(", "));
    println!("  signer        {}", m.signer);
    Ok(())
}

/// `cargo build --release --target wasm32-wasip2`; the component it wrote.
fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--lib",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        bail!(
            "cargo build --release --target wasm32-wasip2 failed in {} (its errors are above; \
             `rustup target add wasm32-wasip2` if the target is missing)",
            dir.display()
        );
    }
    // The artefact's path from cargo itself, wherever CARGO_TARGET_DIR is.
    let mut wasm = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || !message["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        {
            continue;
        }
        let files = message["filenames"].as_array().into_iter().flatten();
        for file in files.filter_map(|f| f.as_str()) {
            if file.ends_with(".wasm") {
                wasm = Some(PathBuf::from(file));
            }
        }
    }
    wasm.with_context(|| {
        format!(
            "cargo built no .wasm in {}: is `crate-type = [\"cdylib\", ...]` in its Cargo.toml's [lib]?",
            dir.display()
        )
    })
}

/// componentize-py against the project's `wit/`; the component it wrote.
fn build_python(
    dir: &Path,
    name: &str,
    kind: agad_protocol::manifest::Kind,
) -> anyhow::Result<PathBuf> {
    let world = match kind {
        agad_protocol::manifest::Kind::Inspector => "inspector",
        agad_protocol::manifest::Kind::Specialist => "specialist",
    };
    let tool = std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    let status = Command::new(&tool)
        .current_dir(dir)
        .args([
            "-d",
            "wit",
            "-w",
            world,
            "componentize",
            "app",
            "-p",
            ".",
            "-o",
        ])
        .arg(wasm.strip_prefix(dir).unwrap_or(&wasm))
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} not found: install it with `pip install {COMPONENTIZE_PY}` (or set COMPONENTIZE_PY \
             to its path)",
            tool.to_string_lossy()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot run {}", tool.to_string_lossy())),
        Ok(status) if !status.success() => bail!(
            "{} failed in {} (its errors are above)",
            tool.to_string_lossy(),
            dir.display()
        ),
        Ok(_) => Ok(wasm),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sdk_dependency_by_git_or_path() {
        assert_eq!(
            sdk_dependency(Some("https://example.org/agad.git"), "").unwrap(),
            "agad-sdk = { git = \"https://example.org/agad.git\" }"
        );
        let repo = built_from().expect("built from this checkout");
        let line = sdk_dependency(
            Some(&repo.to_string_lossy()),
            ", features = [\"specialist\"]",
        )
        .unwrap();
        assert!(line.contains("/sdk\""), "{line}");
        assert!(line.ends_with(", features = [\"specialist\"] }"), "{line}");
        assert!(sdk_dependency(Some("/nonexistent"), "").is_err());
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn every_template_manifest_parses() {
        for (lang, kind) in [
            (Lang::Rust, Kind::Inspector),
            (Lang::Rust, Kind::Specialist),
            (Lang::Python, Kind::Inspector),
            (Lang::Python, Kind::Specialist),
        ] {
            let args = NewArgs {
                name: "my-check".into(),
                kind,
                lang,
                dir: None,
                sdk: None,
            };
            let files = project_files(&args).unwrap();
            let manifest = &files.iter().find(|(p, _)| p == "manifest.toml").unwrap().1;
            let spec = agad_protocol::ManifestSpec::from_toml(manifest).unwrap();
            assert_eq!(spec.name, "my-check");
            assert!(files.iter().all(|(_, text)| !text.contains("{{")));
        }
    }
}
