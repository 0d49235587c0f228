//! The in-memory name table: which names resolve to which addresses on which network.
//!
//! Takes `add`/`remove` calls from the engine (names: service, `container_name`, aliases,
//! `links:` aliases); gives `resolve(network, qname)` to `server`. Shared as an
//! `Arc<RwLock<..>>`: updates are visible to the next query, no restart. Pure logic,
//! unit-tested here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

/// One container's names and address on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    network: String,
    container: String,
    ip: Ipv4Addr,
    /// Lower-case, without trailing dot.
    names: Vec<String>,
}

/// What the table says about a query name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Known on this network: its addresses (several for a scaled service), sorted.
    Addrs(Vec<Ipv4Addr>),
    /// A project name that does not exist (here): authoritative NXDOMAIN.
    NxDomain,
    /// Not ours: forward upstream.
    Forward,
}

/// The project's name table.
#[derive(Debug, Clone)]
pub struct Registry {
    project: Arc<str>,
    inner: Arc<RwLock<Vec<Endpoint>>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Registry {
    pub fn new(project: &str) -> Self {
        Registry {
            project: normalize(project).into(),
            inner: Arc::default(),
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Registers (or replaces) a container's names and address on a network.
    pub fn add(&self, network: &str, container: &str, ip: Ipv4Addr, names: &[String]) {
        let mut names: Vec<String> = names
            .iter()
            .map(|n| normalize(n))
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        let ep = Endpoint {
            network: network.to_owned(),
            container: container.to_owned(),
            ip,
            names,
        };
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.retain(|e| !(e.network == network && e.container == container));
        t.push(ep);
    }

    /// Removes a container from one network.
    pub fn remove(&self, network: &str, container: &str) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.retain(|e| !(e.network == network && e.container == container));
    }

    /// Removes a container from every network.
    pub fn remove_container(&self, container: &str) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.retain(|e| e.container != container);
    }

    /// Looks a name up as seen from `network`.
    pub fn resolve(&self, network: &str, qname: &str) -> Answer {
        let q = normalize(qname);
        let suffix = format!(".{}", self.project);
        // `web.<project>` is `web` on this project's networks.
        let (bare, under_project) = match q.strip_suffix(&suffix) {
            Some(b) if !b.is_empty() => (b.to_owned(), true),
            _ => (q.clone(), q == *self.project),
        };
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let addrs: BTreeSet<Ipv4Addr> = t
            .iter()
            .filter(|e| e.network == network && e.names.iter().any(|n| *n == bare || *n == q))
            .map(|e| e.ip)
            .collect();
        if !addrs.is_empty() {
            return Answer::Addrs(addrs.into_iter().collect());
        }
        // Unknown single labels and unknown project names must not go upstream: that
        // would leak service names (network-eval P9), and would be slow besides.
        if under_project || !q.contains('.') || t.iter().any(|e| e.names.contains(&q)) {
            return Answer::NxDomain;
        }
        Answer::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_aliases_and_project_suffix() {
        let r = Registry::new("proj");
        r.add(
            "proj_default",
            "proj-web-1",
            ip("10.0.0.2"),
            &names(&["web", "proj-web-1", "frontend"]),
        );
        for q in [
            "web",
            "WEB.",
            "web.proj",
            "proj-web-1",
            "frontend",
            "frontend.proj.",
        ] {
            assert_eq!(
                r.resolve("proj_default", q),
                Answer::Addrs(vec![ip("10.0.0.2")]),
                "{q}"
            );
        }
        assert_eq!(r.resolve("proj_default", "db"), Answer::NxDomain);
        assert_eq!(r.resolve("proj_default", "db.proj"), Answer::NxDomain);
        assert_eq!(r.resolve("proj_default", "example.com"), Answer::Forward);
    }

    #[test]
    fn scaled_service_gives_all_addresses() {
        let r = Registry::new("p");
        r.add("n", "p-web-1", ip("10.0.0.3"), &names(&["web"]));
        r.add("n", "p-web-2", ip("10.0.0.2"), &names(&["web"]));
        assert_eq!(
            r.resolve("n", "web"),
            Answer::Addrs(vec![ip("10.0.0.2"), ip("10.0.0.3")])
        );
        r.remove_container("p-web-1");
        assert_eq!(r.resolve("n", "web"), Answer::Addrs(vec![ip("10.0.0.2")]));
    }

    #[test]
    fn only_the_askers_network() {
        let r = Registry::new("p");
        r.add("front", "p-web-1", ip("10.1.0.2"), &names(&["web"]));
        r.add("back", "p-db-1", ip("10.2.0.2"), &names(&["db"]));
        r.add("back", "p-web-1", ip("10.2.0.3"), &names(&["web"]));
        assert_eq!(r.resolve("front", "db"), Answer::NxDomain);
        assert_eq!(
            r.resolve("front", "web"),
            Answer::Addrs(vec![ip("10.1.0.2")])
        );
        assert_eq!(
            r.resolve("back", "web"),
            Answer::Addrs(vec![ip("10.2.0.3")])
        );
    }

    #[test]
    fn replace_updates_without_stale_answers() {
        let r = Registry::new("p");
        r.add("n", "p-db-1", ip("10.0.0.5"), &names(&["db"]));
        r.add("n", "p-db-1", ip("10.0.0.9"), &names(&["db"]));
        assert_eq!(r.resolve("n", "db"), Answer::Addrs(vec![ip("10.0.0.9")]));
        r.remove("n", "p-db-1");
        assert_eq!(r.resolve("n", "db"), Answer::NxDomain);
    }
}
