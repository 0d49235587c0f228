//! The in-memory name table: which names resolve to which addresses on which network.
//!
//! Takes `add`/`remove` calls from the engine (names: service, `container_name`, aliases),
//! `set_links` (legacy `links:`/`external_links:` aliases, seen only by the linking
//! container) and `set_subnet`; gives `resolve_from(network, asker, qname)` and
//! `reverse(network, ip)` (PTR) to `server`. Shared as an
//! `Arc<RwLock<..>>`: updates are visible to the next query, no restart. Pure logic,
//! unit-tested here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;

/// One container's names and address on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    network: String,
    container: String,
    ip: Ipv4Addr,
    /// Lower-case, without trailing dot.
    names: Vec<String>,
}

/// What a legacy link alias points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTarget {
    /// A name of this project (`links: [db:alias]`: the service), resolved at query time
    /// so a recreated target is never answered stale.
    Name(String),
    /// A fixed address (`external_links`: a container outside the project, looked up
    /// when the linking container was created).
    Ip(Ipv4Addr),
}

/// A `links:` / `external_links:` alias, visible only to the container that declares it
/// (Docker's semantics on user-defined networks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    network: String,
    /// The linking container (the asker).
    container: String,
    alias: String,
    target: LinkTarget,
}

#[derive(Debug, Default)]
struct Table {
    endpoints: Vec<Endpoint>,
    links: Vec<Link>,
    /// Subnets of the project's networks: reverse lookups inside them are answered here.
    subnets: Vec<(String, Ipv4Net)>,
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

/// What the table says about a reverse (PTR) lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reverse {
    /// `<container>.<network>`, as Docker answers.
    Name(String),
    /// An address in one of the project's subnets that no container holds.
    NxDomain,
    /// Not ours: forward upstream.
    Forward,
}

/// The project's name table.
#[derive(Debug, Clone)]
pub struct Registry {
    project: Arc<str>,
    /// `.<project>`, precomputed for the lookup path.
    suffix: Arc<str>,
    inner: Arc<RwLock<Table>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4.
pub fn parse_reverse_v4(qname: &str) -> Option<Ipv4Addr> {
    let q = qname.trim_end_matches('.');
    let rest = q
        .len()
        .checked_sub(".in-addr.arpa".len())
        .filter(|&i| q.is_char_boundary(i) && q[i..].eq_ignore_ascii_case(".in-addr.arpa"))
        .map(|i| &q[..i])?;
    let mut o = [0u8; 4];
    let mut n = 0;
    for part in rest.split('.') {
        if n == 4 {
            return None;
        }
        o[3 - n] = part.parse().ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(o))
}

impl Registry {
    pub fn new(project: &str) -> Self {
        let project = normalize(project);
        Registry {
            suffix: format!(".{project}").into(),
            project: project.into(),
            inner: Arc::default(),
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
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
        let mut t = self.write();
        t.endpoints
            .retain(|e| !(e.network == network && e.container == container));
        t.endpoints.push(ep);
    }

    /// Sets (replaces) the link aliases `container` sees on `network`.
    pub fn set_links(&self, network: &str, container: &str, links: &[(String, LinkTarget)]) {
        let mut t = self.write();
        t.links
            .retain(|l| !(l.network == network && l.container == container));
        for (alias, target) in links {
            let alias = normalize(alias);
            if alias.is_empty() {
                continue;
            }
            let target = match target {
                LinkTarget::Name(n) => LinkTarget::Name(normalize(n)),
                LinkTarget::Ip(ip) => LinkTarget::Ip(*ip),
            };
            t.links.push(Link {
                network: network.to_owned(),
                container: container.to_owned(),
                alias,
                target,
            });
        }
    }

    /// Declares a network's subnet, so reverse lookups inside it never go upstream.
    pub fn set_subnet(&self, network: &str, subnet: Ipv4Net) {
        let mut t = self.write();
        t.subnets.retain(|(n, _)| n != network);
        t.subnets.push((network.to_owned(), subnet.trunc()));
    }

    /// Removes a container from one network.
    pub fn remove(&self, network: &str, container: &str) {
        let mut t = self.write();
        t.endpoints
            .retain(|e| !(e.network == network && e.container == container));
        t.links
            .retain(|l| !(l.network == network && l.container == container));
    }

    /// Removes a container from every network.
    pub fn remove_container(&self, container: &str) {
        let mut t = self.write();
        t.endpoints.retain(|e| e.container != container);
        t.links.retain(|l| l.container != container);
    }

    /// Looks a name up as seen from `network`, by no container in particular.
    pub fn resolve(&self, network: &str, qname: &str) -> Answer {
        self.resolve_from(network, None, qname)
    }

    /// Looks a name up as the container with address `asker` on `network` sees it: its
    /// own link aliases first, then the network's names.
    pub fn resolve_from(&self, network: &str, asker: Option<Ipv4Addr>, qname: &str) -> Answer {
        let q = normalize(qname);
        // `web.<project>` is `web` on this project's networks.
        let (bare, under_project) = match q.strip_suffix(&*self.suffix) {
            Some(b) if !b.is_empty() => (b, true),
            _ => (q.as_str(), q == *self.project),
        };
        let t = self.read();
        let on_net = |name: &str| -> BTreeSet<Ipv4Addr> {
            t.endpoints
                .iter()
                .filter(|e| e.network == network && e.names.iter().any(|n| n == name))
                .map(|e| e.ip)
                .collect()
        };
        if let Some(asker) = asker {
            if !t.links.is_empty() {
                let me = t
                    .endpoints
                    .iter()
                    .find(|e| e.network == network && e.ip == asker)
                    .map(|e| e.container.as_str());
                let mut addrs = BTreeSet::new();
                for l in t.links.iter().filter(|l| {
                    Some(l.container.as_str()) == me && l.network == network && l.alias == bare
                }) {
                    match &l.target {
                        LinkTarget::Ip(ip) => {
                            addrs.insert(*ip);
                        }
                        LinkTarget::Name(n) => addrs.extend(on_net(n)),
                    }
                }
                if !addrs.is_empty() {
                    return Answer::Addrs(addrs.into_iter().collect());
                }
            }
        }
        let mut addrs = on_net(bare);
        if under_project {
            addrs.extend(on_net(&q));
        }
        if !addrs.is_empty() {
            return Answer::Addrs(addrs.into_iter().collect());
        }
        // Unknown single labels and unknown project names must not go upstream: that
        // would leak service names (network-eval P9), and would be slow besides.
        if under_project || !q.contains('.') || t.endpoints.iter().any(|e| e.names.contains(&q)) {
            return Answer::NxDomain;
        }
        Answer::Forward
    }

    /// Reverse lookup of `ip` as seen from `network`: the container holding it there, an
    /// authoritative "no such name" inside the project's subnets, else upstream.
    pub fn reverse(&self, network: &str, ip: Ipv4Addr) -> Reverse {
        let t = self.read();
        if let Some(e) = t
            .endpoints
            .iter()
            .find(|e| e.network == network && e.ip == ip)
        {
            return Reverse::Name(format!("{}.{}", e.container, e.network));
        }
        if t.subnets.iter().any(|(_, s)| s.contains(&ip)) {
            return Reverse::NxDomain;
        }
        Reverse::Forward
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

    #[test]
    fn link_aliases_only_for_the_linking_container() {
        let r = Registry::new("p");
        r.add("n", "p-db-1", ip("10.0.0.2"), &names(&["db"]));
        r.add("n", "p-web-1", ip("10.0.0.3"), &names(&["web"]));
        r.add("n", "p-other-1", ip("10.0.0.4"), &names(&["other"]));
        r.set_links(
            "n",
            "p-web-1",
            &[
                ("database".into(), LinkTarget::Name("db".into())),
                ("legacy".into(), LinkTarget::Ip(ip("10.0.0.9"))),
            ],
        );
        let web = Some(ip("10.0.0.3"));
        assert_eq!(
            r.resolve_from("n", web, "database"),
            Answer::Addrs(vec![ip("10.0.0.2")])
        );
        assert_eq!(
            r.resolve_from("n", web, "LEGACY."),
            Answer::Addrs(vec![ip("10.0.0.9")])
        );
        assert_eq!(
            r.resolve_from("n", Some(ip("10.0.0.4")), "database"),
            Answer::NxDomain
        );
        assert_eq!(r.resolve("n", "database"), Answer::NxDomain);
        // The target moves: the alias follows at once.
        r.add("n", "p-db-1", ip("10.0.0.7"), &names(&["db"]));
        assert_eq!(
            r.resolve_from("n", web, "database"),
            Answer::Addrs(vec![ip("10.0.0.7")])
        );
        r.remove_container("p-web-1");
        assert_eq!(r.resolve_from("n", web, "database"), Answer::NxDomain);
    }

    #[test]
    fn reverse_lookups() {
        let r = Registry::new("p");
        r.set_subnet("p_default", "10.0.0.0/24".parse().unwrap());
        r.add("p_default", "p-db-1", ip("10.0.0.2"), &names(&["db"]));
        assert_eq!(
            parse_reverse_v4("2.0.0.10.in-addr.arpa."),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(parse_reverse_v4("0.10.in-addr.arpa."), None);
        assert_eq!(parse_reverse_v4("1.2.3.4.5.in-addr.arpa"), None);
        assert_eq!(parse_reverse_v4("example.com"), None);
        assert_eq!(
            r.reverse("p_default", ip("10.0.0.2")),
            Reverse::Name("p-db-1.p_default".into())
        );
        assert_eq!(r.reverse("p_default", ip("10.0.0.77")), Reverse::NxDomain);
        assert_eq!(r.reverse("p_default", ip("192.0.2.1")), Reverse::Forward);
    }
}
