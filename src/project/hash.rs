//! The per-service configuration hash used for convergence (`config --hash`).
//!
//! Takes a resolved [`Service`]; gives the hex SHA-256 of its canonical JSON (keys sorted)
//! with the fields that must never cause a recreate blanked, as docker compose does:
//! `build`, `pull_policy`, `scale`, `deploy.replicas`, `depends_on` and `profiles`. The
//! service name and `x-` extensions are not part of the model, so they never count.
//! Neighbours: `plan` compares it with the hash stored on existing containers.

use sha2::{Digest, Sha256};

use super::model::Service;

/// Stable hash of the resolved service (see the module doc for what is excluded).
pub fn service_config_hash(service: &Service) -> String {
    let mut s = service.clone();
    s.build = None;
    s.pull_policy = None;
    s.scale = None;
    s.depends_on.clear();
    s.profiles.clear();
    if let Some(d) = s.deploy.as_mut() {
        d.replicas = None;
        if d.resources.is_none() && d.restart_policy.is_none() && d.labels.is_empty() {
            s.deploy = None;
        }
    }
    // serde_json's map is a BTreeMap (no `preserve_order`), so keys come out sorted.
    let value = serde_json::to_value(&s).unwrap_or(serde_json::Value::Null);
    let text = value.to_string();
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::model::{Build, Deploy, Restart};

    fn base() -> Service {
        Service {
            name: "web".into(),
            image: Some("nginx".into()),
            ..Service::default()
        }
    }

    #[test]
    fn excluded_fields_do_not_change_the_hash() {
        let h = service_config_hash(&base());
        let mut s = base();
        s.scale = Some(3);
        s.profiles = vec!["debug".into()];
        s.pull_policy = Some("always".into());
        s.deploy = Some(Deploy {
            replicas: Some(4),
            ..Deploy::default()
        });
        s.build = Some(Build {
            context: "/x".into(),
            dockerfile: "Dockerfile".into(),
            dockerfile_inline: None,
            args: Default::default(),
            target: None,
            labels: Default::default(),
            tags: vec![],
            network: None,
            no_cache: false,
            pull: false,
        });
        s.name = "other".into();
        assert_eq!(service_config_hash(&s), h);
    }

    #[test]
    fn included_fields_change_the_hash() {
        let h = service_config_hash(&base());
        let mut s = base();
        s.restart = Restart::Always;
        assert_ne!(service_config_hash(&s), h);
        let mut s = base();
        s.environment.insert("A".into(), Some("1".into()));
        assert_ne!(service_config_hash(&s), h);
        assert_eq!(h.len(), 64);
    }
}
