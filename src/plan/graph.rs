//! The service dependency graph (petgraph): start order and cycle reporting.
//!
//! Takes [`Desired`](super::Desired) services; gives them in an order where every service
//! comes after what it depends on (ties broken by name, so plans are deterministic), or the
//! cycle as `a -> b -> a`. Pure.

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};

use super::Desired;

/// Graph errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Services ordered so that dependencies come first; deterministic (by name among peers).
pub fn order_services(desired: &[Desired]) -> Result<Vec<String>, GraphError> {
    let mut g: DiGraph<&str, ()> = DiGraph::new();
    let mut idx: BTreeMap<&str, NodeIndex> = BTreeMap::new();
    let mut names: Vec<&str> = desired.iter().map(|d| d.service.as_str()).collect();
    names.sort_unstable();
    for n in &names {
        idx.insert(n, g.add_node(n));
    }
    for d in desired {
        for dep in &d.depends_on {
            if let Some(&from) = idx.get(dep.service.as_str()) {
                g.add_edge(from, idx[d.service.as_str()], ());
            }
        }
    }
    if petgraph::algo::is_cyclic_directed(&g) {
        return Err(GraphError::Cycle(find_cycle(desired)));
    }
    // Kahn's algorithm with a sorted ready set: stable order independent of input order.
    let mut indeg: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
    for e in g.edge_indices() {
        let (_, to) = g.edge_endpoints(e).expect("edge exists");
        *indeg.get_mut(g[to]).expect("node exists") += 1;
    }
    let mut ready: std::collections::BTreeSet<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::with_capacity(names.len());
    while let Some(n) = ready.pop_first() {
        out.push(n.to_string());
        for nb in g.neighbors(idx[n]) {
            let d = indeg.get_mut(g[nb]).expect("node exists");
            *d -= 1;
            if *d == 0 {
                ready.insert(g[nb]);
            }
        }
    }
    Ok(out)
}

/// The first cycle found by depth-first search from services in name order, written from
/// the dependent to its dependency and back (`a -> b -> a`).
fn find_cycle(desired: &[Desired]) -> Vec<String> {
    let deps: BTreeMap<&str, Vec<&str>> = desired
        .iter()
        .map(|d| {
            let mut v: Vec<&str> = d.depends_on.iter().map(|x| x.service.as_str()).collect();
            v.sort_unstable();
            (d.service.as_str(), v)
        })
        .collect();
    fn dfs<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| *p == n) {
            let mut c: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for d in deps.get(n).into_iter().flatten() {
            if let Some(c) = dfs(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for n in deps.keys() {
        if let Some(c) = dfs(n, &deps, &mut Vec::new(), &mut done) {
            return c;
        }
    }
    Vec::new()
}
