//! Planning: a pure reconcile of what the project wants against what exists, yielding the
//! operations to run, *including the waits*, as a dependency graph.
//!
//! Takes [`Desired`] services (derived from the `Project` by the engine: name, replicas,
//! config hash, dependencies) and [`Observed`] containers (from state labels). Gives a
//! [`Plan`]: operations with the indices of the operations each one must wait for. No
//! I/O, no clocks: tested with literal inputs. Neighbours: `project` (upstream),
//! `engine::executor` (runs the plan without deciding anything).

pub mod graph;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use graph::{order_services, GraphError};

/// A service as the plan needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub service: String,
    pub replicas: u32,
    /// Stable hash of the resolved service config (label on its containers).
    pub config_hash: String,
    /// `container_name`, when set (then replicas must be 1).
    pub container_name: Option<String>,
    pub depends_on: Vec<Dependency>,
    /// Whether the service has a healthcheck (what `up --wait` waits for).
    pub healthcheck: bool,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
    /// `required: false` dependencies may be missing from the project.
    pub required: bool,
    /// `restart: true` (and implied by links and `service:` namespaces): when `up`
    /// recreates the dependency, this service's running containers are restarted.
    pub restart: bool,
}

/// What to wait for before a dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    Started,
    /// Still running when checked (`up --wait` for services without a healthcheck).
    Running,
    Healthy,
    CompletedSuccessfully,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::Started => "started",
            Condition::Running => "running",
            Condition::Healthy => "healthy",
            Condition::CompletedSuccessfully => "completed successfully",
        })
    }
}

/// A container that exists, as read back from state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    pub service: String,
    pub number: u32,
    pub config_hash: String,
    pub running: bool,
}

/// Convergence flags of `up`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpOptions {
    pub force_recreate: bool,
    pub no_recreate: bool,
    pub remove_orphans: bool,
    /// `--no-start`: create only.
    pub no_start: bool,
    /// `--wait`: end with a wait for every service (healthy, or running without a
    /// healthcheck).
    pub wait: bool,
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// Make sure the image of `service` is in the store.
    EnsureImage { service: String },
    /// Create the project's networks (idempotent).
    EnsureNetworks,
    /// Stop and remove an existing container.
    Remove { id: String, service: String },
    /// Create container `name` (number `number`) of `service`.
    Create {
        service: String,
        number: u32,
        name: String,
    },
    /// Start container `name`.
    Start { service: String, name: String },
    /// Stop and start again container `name` (kept, not recreated): a dependency with
    /// `restart: true` was recreated.
    Restart { service: String, name: String },
    /// Wait until every container of `service` is in `condition`.
    Wait {
        service: String,
        condition: Condition,
    },
    /// Create and start `run`'s one-off container `name` of `service`; with `attach`, a
    /// client attaches right after the start (a foreground `run`); with `auto_remove`, the
    /// supervisor removes it once it has exited (`run -d --rm`).
    RunOneoff {
        service: String,
        name: String,
        attach: bool,
        auto_remove: bool,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::EnsureImage { service } => write!(f, "ensure image of {service}"),
            Op::EnsureNetworks => write!(f, "ensure networks"),
            Op::Remove { id, .. } => write!(f, "remove container {id}"),
            Op::Create { name, .. } => write!(f, "create container {name}"),
            Op::Start { name, .. } => write!(f, "start container {name}"),
            Op::Restart { name, .. } => write!(f, "restart container {name}"),
            Op::Wait { service, condition } => write!(f, "wait for {service} {condition}"),
            Op::RunOneoff { name, .. } => write!(f, "run one-off container {name}"),
        }
    }
}

/// A step: an operation and the steps it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub after: Vec<usize>,
}

/// The operations of an `up`, in an order where every step comes after the ones it waits
/// for (so running them one by one in order is also correct).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    fn push(&mut self, op: Op, after: Vec<usize>) -> usize {
        let mut after = after;
        after.sort_unstable();
        after.dedup();
        self.steps.push(Step { op, after });
        self.steps.len() - 1
    }

    /// Create container `name` after `after`, then start it unless `--no-start`; returns
    /// the last step.
    fn create_and_start(
        &mut self,
        service: &str,
        number: u32,
        name: String,
        after: Vec<usize>,
        opts: &UpOptions,
    ) -> usize {
        let c = self.push(
            Op::Create {
                service: service.to_string(),
                number,
                name: name.clone(),
            },
            after,
        );
        if opts.no_start {
            return c;
        }
        self.push(
            Op::Start {
                service: service.to_string(),
                name,
            },
            vec![c],
        )
    }

    /// True when the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.steps.iter().all(|s| {
            matches!(
                s.op,
                Op::EnsureImage { .. } | Op::EnsureNetworks | Op::Wait { .. }
            )
        })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            write!(f, "{i:>3}  {}", s.op)?;
            if !s.after.is_empty() {
                let after: Vec<String> = s.after.iter().map(|a| a.to_string()).collect();
                write!(f, "  (after {})", after.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The name of container `number` of `service` in `project`, as compose names it.
pub fn container_name(project: &str, d: &Desired, number: u32) -> String {
    match &d.container_name {
        Some(n) => n.clone(),
        None => format!("{project}-{}-{number}", d.service),
    }
}

/// Reconcile: what must happen so that `observed` becomes `desired`.
pub fn reconcile(
    project: &str,
    desired: &[Desired],
    observed: &[Observed],
    opts: &UpOptions,
) -> Result<Plan, GraphError> {
    let order = order_services(desired)?;
    let by_name: BTreeMap<&str, &Desired> =
        desired.iter().map(|d| (d.service.as_str(), d)).collect();
    let mut plan = Plan::default();
    let nets = plan.push(Op::EnsureNetworks, vec![]);

    // Orphans first: containers of services the project no longer has.
    let mut orphan_steps = Vec::new();
    if opts.remove_orphans {
        for o in observed {
            if !by_name.contains_key(o.service.as_str()) {
                orphan_steps.push(plan.push(
                    Op::Remove {
                        id: o.id.clone(),
                        service: o.service.clone(),
                    },
                    vec![],
                ));
            }
        }
    }

    // Per service: the step after which it counts as "started" for its dependents, and
    // the waits already planned, so each (service, condition) is waited for once.
    let mut ready: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut waits: BTreeMap<(String, Condition), usize> = BTreeMap::new();
    let mut recreated: BTreeSet<String> = BTreeSet::new();

    for name in order {
        let d = by_name[name.as_str()];
        let image = plan.push(
            Op::EnsureImage {
                service: d.service.clone(),
            },
            vec![],
        );
        // What this service's starts wait for: networks, orphan removal, dependencies.
        let mut gate = vec![nets, image];
        gate.extend(&orphan_steps);
        for dep in &d.depends_on {
            if !by_name.contains_key(dep.service.as_str()) {
                continue; // optional and absent (the loader refuses required ones)
            }
            let key = (dep.service.clone(), dep.condition);
            let w = match waits.get(&key) {
                Some(w) => *w,
                None => {
                    let w = plan.push(
                        Op::Wait {
                            service: dep.service.clone(),
                            condition: dep.condition,
                        },
                        ready.get(&dep.service).cloned().unwrap_or_default(),
                    );
                    waits.insert(key, w);
                    w
                }
            };
            gate.push(w);
        }

        // A recreated `restart: true` dependency restarts this service's kept containers.
        let restart_for_deps = d
            .depends_on
            .iter()
            .any(|dep| dep.restart && recreated.contains(&dep.service));
        let mut mine: Vec<&Observed> = observed.iter().filter(|o| o.service == d.service).collect();
        mine.sort_by_key(|o| o.number);
        let mut done = Vec::new();
        for number in 1..=d.replicas {
            let name = container_name(project, d, number);
            match mine.iter().find(|o| o.number == number) {
                Some(o) => {
                    let changed = o.config_hash != d.config_hash;
                    let recreate = !opts.no_recreate && (opts.force_recreate || changed);
                    if recreate {
                        recreated.insert(d.service.clone());
                        let rm = plan.push(
                            Op::Remove {
                                id: o.id.clone(),
                                service: d.service.clone(),
                            },
                            vec![image],
                        );
                        let mut after = gate.clone();
                        after.push(rm);
                        done.push(plan.create_and_start(&d.service, number, name, after, opts));
                    } else if !o.running && !opts.no_start {
                        done.push(plan.push(
                            Op::Start {
                                service: d.service.clone(),
                                name: o.id.clone(),
                            },
                            gate.clone(),
                        ));
                    } else if restart_for_deps && o.running && !opts.no_start {
                        done.push(plan.push(
                            Op::Restart {
                                service: d.service.clone(),
                                name: o.id.clone(),
                            },
                            gate.clone(),
                        ));
                    }
                }
                None => {
                    done.push(plan.create_and_start(&d.service, number, name, gate.clone(), opts));
                }
            }
        }
        // Scale down: containers numbered above the replica count go.
        for o in mine.iter().filter(|o| o.number > d.replicas) {
            done.push(plan.push(
                Op::Remove {
                    id: o.id.clone(),
                    service: d.service.clone(),
                },
                vec![],
            ));
        }
        ready.insert(d.service.clone(), done);
    }
    if opts.wait && !opts.no_start {
        for d in desired {
            let condition = if d.healthcheck {
                Condition::Healthy
            } else {
                Condition::Running
            };
            if !waits.contains_key(&(d.service.clone(), condition)) {
                let after = ready.get(&d.service).cloned().unwrap_or_default();
                plan.push(
                    Op::Wait {
                        service: d.service.clone(),
                        condition,
                    },
                    after,
                );
            }
        }
    }
    Ok(plan)
}

/// The plan of `run`: what the one-off `name` of `target` needs, as `up` would make it.
/// The project's networks and volumes always (`--no-deps` too); with `deps` (the services
/// `target` depends on, transitively; empty with `--no-deps`) their `up` and then the waits
/// for `target`'s `depends_on` conditions; then the one-off is created and started
/// (`attach`: in the foreground, see [`Op::RunOneoff`]).
pub fn plan_run(
    project: &str,
    target: &Desired,
    name: &str,
    attach: bool,
    auto_remove: bool,
    deps: &[Desired],
    observed: &[Observed],
) -> Result<Plan, GraphError> {
    let mut plan = if deps.is_empty() {
        Plan::default()
    } else {
        reconcile(project, deps, observed, &UpOptions::default())?
    };
    // Everything of the dependencies' `up` comes before their waits.
    let up_of_deps: Vec<usize> = (0..plan.steps.len()).collect();
    let nets = match plan
        .steps
        .iter()
        .position(|s| matches!(s.op, Op::EnsureNetworks))
    {
        Some(i) => i,
        None => plan.push(Op::EnsureNetworks, vec![]),
    };
    let image = plan.push(
        Op::EnsureImage {
            service: target.service.clone(),
        },
        vec![],
    );
    let mut gate = vec![nets, image];
    for dep in &target.depends_on {
        if !deps.iter().any(|d| d.service == dep.service) {
            continue; // --no-deps, or optional and absent
        }
        gate.push(plan.push(
            Op::Wait {
                service: dep.service.clone(),
                condition: dep.condition,
            },
            up_of_deps.clone(),
        ));
    }
    plan.push(
        Op::RunOneoff {
            service: target.service.clone(),
            name: name.to_string(),
            attach,
            auto_remove,
        },
        gate,
    );
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, hash: &str, deps: &[(&str, Condition)]) -> Desired {
        Desired {
            service: name.into(),
            replicas: 1,
            config_hash: hash.into(),
            container_name: None,
            healthcheck: false,
            depends_on: deps
                .iter()
                .map(|(s, c)| Dependency {
                    service: s.to_string(),
                    condition: *c,
                    required: true,
                    restart: false,
                })
                .collect(),
        }
    }

    fn obs(service: &str, n: u32, hash: &str, running: bool) -> Observed {
        Observed {
            id: format!("p-{service}-{n}"),
            service: service.into(),
            number: n,
            config_hash: hash.into(),
            running,
        }
    }

    fn ops(p: &Plan) -> Vec<String> {
        p.steps.iter().map(|s| s.op.to_string()).collect()
    }

    #[test]
    fn fresh_project_creates_in_dependency_order_with_waits() {
        let d = vec![
            svc("web", "h1", &[("db", Condition::Healthy)]),
            svc("db", "h2", &[]),
        ];
        let p = reconcile("p", &d, &[], &UpOptions::default()).unwrap();
        let text = p.to_string();
        assert_eq!(
            ops(&p),
            vec![
                "ensure networks",
                "ensure image of db",
                "create container p-db-1",
                "start container p-db-1",
                "ensure image of web",
                "wait for db healthy",
                "create container p-web-1",
                "start container p-web-1",
            ],
            "{text}"
        );
        // The wait comes after db's start, web's create after the wait.
        assert_eq!(p.steps[5].after, vec![3]);
        assert!(p.steps[6].after.contains(&5));
    }

    #[test]
    fn unchanged_project_is_a_noop() {
        let d = vec![
            svc("db", "h2", &[]),
            svc("web", "h1", &[("db", Condition::Started)]),
        ];
        let o = vec![obs("db", 1, "h2", true), obs("web", 1, "h1", true)];
        let p = reconcile("p", &d, &o, &UpOptions::default()).unwrap();
        assert!(p.is_noop(), "{p}");
    }

    #[test]
    fn changed_hash_recreates_only_that_service() {
        let d = vec![svc("db", "h2", &[]), svc("web", "NEW", &[])];
        let o = vec![obs("db", 1, "h2", true), obs("web", 1, "h1", true)];
        let p = reconcile("p", &d, &o, &UpOptions::default()).unwrap();
        let o = ops(&p);
        assert!(o.contains(&"remove container p-web-1".to_string()), "{o:?}");
        assert!(o.contains(&"create container p-web-1".to_string()));
        assert!(!o.iter().any(|s| s.contains("p-db-1")), "{o:?}");
    }

    #[test]
    fn no_recreate_and_force_recreate() {
        let d = vec![svc("web", "NEW", &[])];
        let o = vec![obs("web", 1, "h1", true)];
        let keep = UpOptions {
            no_recreate: true,
            ..Default::default()
        };
        assert!(reconcile("p", &d, &o, &keep).unwrap().is_noop());
        let d = vec![svc("web", "h1", &[])];
        let force = UpOptions {
            force_recreate: true,
            ..Default::default()
        };
        assert!(!reconcile("p", &d, &o, &force).unwrap().is_noop());
    }

    #[test]
    fn scale_up_down_and_orphans() {
        let mut web = svc("web", "h", &[]);
        web.replicas = 2;
        let o = vec![
            obs("web", 1, "h", true),
            obs("web", 3, "h", true),
            obs("old", 1, "x", true),
        ];
        let opts = UpOptions {
            remove_orphans: true,
            ..Default::default()
        };
        let o = ops(&reconcile("p", &[web], &o, &opts).unwrap());
        assert!(o.contains(&"create container p-web-2".to_string()), "{o:?}");
        assert!(o.contains(&"remove container p-web-3".to_string()), "{o:?}");
        assert!(o.contains(&"remove container p-old-1".to_string()), "{o:?}");
    }

    #[test]
    fn stopped_container_is_started_not_recreated() {
        let d = vec![svc("web", "h", &[])];
        let o = vec![obs("web", 1, "h", false)];
        let o = ops(&reconcile("p", &d, &o, &UpOptions::default()).unwrap());
        assert!(o.contains(&"start container p-web-1".to_string()));
        assert!(!o.iter().any(|s| s.starts_with("create")));
    }

    #[test]
    fn recreated_dependency_restarts_dependents_that_ask_for_it() {
        let mut web = svc("web", "h", &[("db", Condition::Started)]);
        let plain = svc("api", "h", &[("db", Condition::Started)]);
        web.depends_on[0].restart = true;
        let d = vec![svc("db", "new", &[]), web, plain];
        let o = vec![
            obs("db", 1, "old", true),
            obs("web", 1, "h", true),
            obs("api", 1, "h", true),
        ];
        let plan = reconcile("p", &d, &o, &UpOptions::default()).unwrap();
        let names = ops(&plan);
        let r = names
            .iter()
            .position(|x| x == "restart container p-web-1")
            .unwrap_or_else(|| panic!("{names:?}"));
        assert!(!names.iter().any(|x| x.contains("p-api-1")), "{names:?}");
        // The restart comes after db's new container has started.
        let start_db = names
            .iter()
            .position(|x| x == "start container p-db-1")
            .unwrap();
        let mut reach = plan.steps[r].after.clone();
        let mut seen = BTreeSet::new();
        while let Some(i) = reach.pop() {
            if seen.insert(i) {
                reach.extend(plan.steps[i].after.iter().copied());
            }
        }
        assert!(seen.contains(&start_db), "{plan}");
        // No recreation of db: nothing to restart.
        let same = vec![svc("db", "old", &[]), d[1].clone()];
        let names = ops(&reconcile("p", &same, &o, &UpOptions::default()).unwrap());
        assert!(!names.iter().any(|x| x.starts_with("restart")), "{names:?}");
    }

    #[test]
    fn wait_adds_a_final_wait_per_service() {
        let mut db = svc("db", "h", &[]);
        db.healthcheck = true;
        let d = vec![db, svc("web", "h", &[("db", Condition::Healthy)])];
        let opts = UpOptions {
            wait: true,
            ..Default::default()
        };
        let o = ops(&reconcile("p", &d, &[], &opts).unwrap());
        // db's healthy wait is shared with web's dependency; web gets a running wait.
        assert_eq!(
            o.iter().filter(|x| *x == "wait for db healthy").count(),
            1,
            "{o:?}"
        );
        assert_eq!(
            o.last().map(String::as_str),
            Some("wait for web running"),
            "{o:?}"
        );
    }

    #[test]
    fn run_on_a_fresh_project_ensures_networks_even_without_deps() {
        let p = plan_run(
            "p",
            &svc("tool", "h", &[]),
            "p-tool-run-1",
            true,
            false,
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            ops(&p),
            vec![
                "ensure networks",
                "ensure image of tool",
                "run one-off container p-tool-run-1",
            ],
            "{p}"
        );
        assert_eq!(p.steps[2].after, vec![0, 1]);
    }

    #[test]
    fn run_starts_deps_then_waits_for_their_conditions() {
        let tool = svc("tool", "h", &[("db", Condition::Healthy)]);
        let deps = vec![svc("db", "h2", &[])];
        let p = plan_run("p", &tool, "p-tool-run-1", false, false, &deps, &[]).unwrap();
        let names = ops(&p);
        assert_eq!(
            names,
            vec![
                "ensure networks",
                "ensure image of db",
                "create container p-db-1",
                "start container p-db-1",
                "ensure image of tool",
                "wait for db healthy",
                "run one-off container p-tool-run-1",
            ],
            "{p}"
        );
        assert!(p.steps[5].after.contains(&3), "{p}");
        assert!(p.steps[6].after.contains(&5), "{p}");
        // --no-deps: no dependency, no wait, the networks still.
        let p = plan_run("p", &tool, "p-tool-run-1", false, false, &[], &[]).unwrap();
        assert_eq!(ops(&p)[0], "ensure networks");
        assert!(!ops(&p).iter().any(|x| x.starts_with("wait")), "{p}");
    }

    #[test]
    fn cycle_is_an_error_with_the_path() {
        let d = vec![
            svc("a", "h", &[("b", Condition::Started)]),
            svc("b", "h", &[("a", Condition::Started)]),
        ];
        let e = reconcile("p", &d, &[], &UpOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> b -> a");
    }
}
