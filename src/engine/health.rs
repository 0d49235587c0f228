//! Healthchecks: the service's `healthcheck` (or the image's `HEALTHCHECK`) run inside the
//! container through the runtime's exec, with Docker's timing rules.
//!
//! Takes a service, its image and a container handle; gives "healthy" or an error saying
//! why not (no healthcheck, container exited, retries exhausted). Used by `up` for
//! `depends_on: condition: service_healthy`. Neighbours: `engine::lifecycle`,
//! `berth_runtime::Container::exec`.

use std::time::{Duration, Instant};

use super::lifecycle::EngineError;
use crate::image::store::Image;
use crate::project::model::Service;

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u64 = 3;
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);

/// A resolved healthcheck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u64,
    pub start_period: Duration,
    pub start_interval: Duration,
}

fn nanos(n: Option<i64>) -> Option<Duration> {
    n.filter(|v| *v > 0).map(|v| Duration::from_nanos(v as u64))
}

/// `["CMD", a, b]` → `[a, b]`; `["CMD-SHELL", s]` → `["/bin/sh", "-c", s]`; `NONE` → none.
pub fn test_argv(test: &[String]) -> Option<Vec<String>> {
    match test.first().map(String::as_str) {
        Some("CMD") => Some(test[1..].to_vec()).filter(|v| !v.is_empty()),
        Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")]),
        Some("NONE") | None => None,
        // compose's string form, already split by the loader into one element.
        Some(_) => Some(vec!["/bin/sh".into(), "-c".into(), test.join(" ")]),
    }
}

/// The healthcheck that applies: the service's, else the image's; `None` when disabled
/// or absent.
pub fn resolve(service: &Service, image: &Image) -> Option<Check> {
    let img = image.config.config.healthcheck.as_ref();
    if let Some(h) = &service.healthcheck {
        if h.disable {
            return None;
        }
        let test = if h.test.is_empty() {
            img.and_then(|i| i.test.clone()).unwrap_or_default()
        } else {
            h.test.clone()
        };
        return Some(Check {
            argv: test_argv(&test)?,
            interval: h
                .interval
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.interval)))
                .unwrap_or(DEFAULT_INTERVAL),
            timeout: h
                .timeout
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.timeout)))
                .unwrap_or(DEFAULT_TIMEOUT),
            retries: h
                .retries
                .or_else(|| img.and_then(|i| i.retries).map(|r| r as u64))
                .unwrap_or(DEFAULT_RETRIES),
            start_period: h
                .start_period
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.start_period)))
                .unwrap_or_default(),
            start_interval: h
                .start_interval
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.start_interval)))
                .unwrap_or(DEFAULT_START_INTERVAL),
        });
    }
    let i = img?;
    Some(Check {
        argv: test_argv(i.test.as_deref().unwrap_or_default())?,
        interval: nanos(i.interval).unwrap_or(DEFAULT_INTERVAL),
        timeout: nanos(i.timeout).unwrap_or(DEFAULT_TIMEOUT),
        retries: i
            .retries
            .map(|r| r.max(0) as u64)
            .unwrap_or(DEFAULT_RETRIES),
        start_period: nanos(i.start_period).unwrap_or_default(),
        start_interval: nanos(i.start_interval).unwrap_or(DEFAULT_START_INTERVAL),
    })
}

/// Probe until healthy. Failures inside the start period don't count; `retries`
/// consecutive failures after it make the container unhealthy.
pub async fn wait_healthy(
    service: &Service,
    image: &Image,
    container: berth_runtime::Container,
) -> Result<(), EngineError> {
    let name = container.id().to_string();
    let Some(check) = resolve(service, image) else {
        return Err(EngineError::Invalid(format!(
            "service {} has no healthcheck, so it can't become healthy",
            service.name
        )));
    };
    let started = Instant::now();
    let container = std::sync::Arc::new(container);
    let mut failures = 0u64;
    let mut last;
    loop {
        let c = container.clone();
        if let Ok(berth_runtime::Status::Exited(x)) = c.status() {
            return Err(EngineError::Invalid(format!(
                "container {name} exited ({}) before it became healthy",
                x.code
            )));
        }
        let argv = check.argv.clone();
        let probe =
            tokio::task::spawn_blocking(move || c.exec(&berth_runtime::ExecSpec::new(argv)));
        let ok = match tokio::time::timeout(check.timeout, probe).await {
            Ok(Ok(Ok(out))) => {
                last = format!(
                    "exit {}: {}",
                    out.code,
                    String::from_utf8_lossy(&out.stdout).trim()
                );
                out.code == 0
            }
            Ok(Ok(Err(e))) => {
                last = e.to_string();
                false
            }
            Ok(Err(e)) => {
                last = e.to_string();
                false
            }
            Err(_) => {
                last = format!("timed out after {:?}", check.timeout);
                false
            }
        };
        if ok {
            return Ok(());
        }
        let in_start = started.elapsed() < check.start_period;
        if !in_start {
            failures += 1;
            if failures >= check.retries.max(1) {
                return Err(EngineError::Invalid(format!(
                    "container {name} is unhealthy: {} failed checks, last: {last}",
                    failures
                )));
            }
        }
        tokio::time::sleep(if in_start {
            check.start_interval
        } else {
            check.interval
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn test_forms() {
        assert_eq!(test_argv(&v(&["CMD", "true"])), Some(v(&["true"])));
        assert_eq!(
            test_argv(&v(&["CMD-SHELL", "test -f /x"])),
            Some(v(&["/bin/sh", "-c", "test -f /x"]))
        );
        assert_eq!(test_argv(&v(&["NONE"])), None);
        assert_eq!(test_argv(&[]), None);
    }
}
