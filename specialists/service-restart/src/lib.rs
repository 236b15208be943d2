//! `service-restart`: restarts a service and confirms it runs.
//!
//! Only a service the node's policy allow-lists can be restarted, and only
//! the way that policy says (the `service` capability): this module names
//! the service, nothing more. A service off the list is refused (`Err`,
//! starting with `refused:`), so the run is recorded as refused by policy.
//!
//! | arg       | default  | meaning                         |
//! |-----------|----------|---------------------------------|
//! | `service` | required | the service's name in the policy |
//!
//! Facts: `restarted` (the restart command succeeded), `running` (a
//! process of the service runs afterwards), `cause` (`restarted`, or
//! `still-down` when the restart did not bring it up), `was_running`,
//! `pid` (its first process, when running), `pids`.

use agad_sdk::service::{ServiceError, ServiceStatus};
use agad_sdk::{Config, Diagnosis};

pub const ARGS: &[&str] = &["service"];

pub fn parse_args(config: &Config) -> Result<String, String> {
    let name: String = config.require("service")?;
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    if name.len() > 64 || !name.chars().all(ok) {
        return Err(format!(
            "service: \"{name}\" is not a service name (letters, digits, -, _, ., @)"
        ));
    }
    Ok(name)
}

pub fn diagnose(status: &ServiceStatus) -> Diagnosis {
    let summary = if status.running {
        format!(
            "restarted {}; it runs (pid {})",
            status.name,
            status
                .pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("restarted {}, but no process of it runs", status.name)
    };
    let mut d = Diagnosis::new(summary)
        .fact("restarted", true)
        .fact("running", status.running)
        .fact(
            "cause",
            if status.running {
                "restarted"
            } else {
                "still-down"
            },
        )
        .fact("was_running", status.was_running);
    if let Some(pid) = status.pids.first() {
        d = d.fact("pid", pid);
    }
    d.fact(
        "pids",
        status
            .pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub struct ServiceRestart;

impl agad_sdk::Specialist for ServiceRestart {
    const ARGS: &'static [&'static str] = ARGS;

    fn run(config: &Config) -> Result<Diagnosis, String> {
        let name = parse_args(config)?;
        match agad_sdk::service::restart(&name) {
            Ok(status) => Ok(diagnose(&status)),
            Err(ServiceError::NotAllowed(why)) => Err(format!("refused: {why}")),
            Err(ServiceError::Failed(why)) => Err(format!("restart failed: {why}")),
        }
    }
}

agad_sdk::specialist!(ServiceRestart);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::config::pairs;

    fn args(items: &[(&str, &str)]) -> Result<String, String> {
        let config = Config::parse_strict(&pairs(items), ARGS).map_err(String::from)?;
        parse_args(&config)
    }

    #[test]
    fn arguments_are_checked() {
        assert!(args(&[]).unwrap_err().contains("service: required"));
        assert_eq!(args(&[("service", "nginx")]).unwrap(), "nginx");
        assert!(args(&[("service", "rm -rf /")]).is_err());
        assert!(args(&[("unit", "x")]).unwrap_err().contains("unknown"));
    }

    #[test]
    fn facts_say_whether_it_runs() {
        let status = ServiceStatus {
            name: "svc".into(),
            was_running: false,
            running: true,
            pids: vec![42, 43],
        };
        let d = diagnose(&status);
        assert_eq!(d.get("restarted"), Some("true"));
        assert_eq!(d.get("running"), Some("true"));
        assert_eq!(d.get("pid"), Some("42"));
        let down = ServiceStatus {
            running: false,
            pids: vec![],
            ..status
        };
        assert_eq!(diagnose(&down).get("cause"), Some("still-down"));
    }
}
