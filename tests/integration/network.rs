//! Network layer on the kernel path: bridges, veths, IPAM, nftables, embedded DNS, teardown.
//!
//! Every test moves its thread into a fresh network namespace first (`enter_fresh_netns`),
//! so bridges, nft tables, sysctls and conntrack are private to it; "the host" below is
//! that namespace. Containers are plain pinned network namespaces (what the runtime will
//! join) with busybox run in them through `nsenter --net=<pin>`. The "internet" is an
//! uplink namespace the test creates; no packet leaves the machine, and DNS forwarding is
//! off or pointed at a stub on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::network::dns::{DnsServer, Registry, Upstream};
use berth::network::netns::{create_netns, remove_netns};
use berth::network::{
    NetworkError, NetworkInfo, NetworkManager, NetworkSpec, PortBackend, PortBinding, PortRange,
    Protocol,
};

use crate::support::{self, eventually, TestEnv};

/// A child process killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts every netns pin under a directory on drop, so a failing test leaves no pins.
struct PinSweeper(Vec<PathBuf>);

impl Drop for PinSweeper {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let _ = remove_netns(&e.path());
                }
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // Built after entering the fresh netns: its worker threads inherit it.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `busybox <args>` inside the network namespace pinned at `pin`.
fn bb(pin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", pin.display()))
        .arg("busybox")
        .args(args);
    c
}

fn output(mut c: Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("spawn: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `busybox nslookup name server` from inside `pin`: the A addresses, or the error text.
fn nslookup(pin: &Path, name: &str, server: Ipv4Addr) -> Result<Vec<Ipv4Addr>, String> {
    let text = output(bb(pin, &["nslookup", name, &server.to_string()]))?;
    // After "Name:" lines, "Address: x" (the server's own "Address:\t<ip>:53" comes first).
    let mut addrs: Vec<Ipv4Addr> = text
        .split("Name:")
        .skip(1)
        .flat_map(|blk| {
            blk.lines()
                .filter_map(|l| l.strip_prefix("Address:"))
                .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(text);
    }
    Ok(addrs)
}

/// A busybox httpd serving `dir` on `port` inside `pin`.
fn httpd(pin: &Path, dir: &Path, port: u16) -> Proc {
    let child = bb(
        pin,
        &[
            "httpd",
            "-f",
            "-p",
            &port.to_string(),
            "-h",
            &dir.to_string_lossy(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawning busybox httpd");
    Proc(child)
}

/// `wget -O - url` from inside `pin`, killed after `secs`. (busybox 1.35's `wget -T`
/// segfaults, so the timeout comes from coreutils.)
fn wget_in(pin: &Path, url: &str, secs: u32) -> Result<String, String> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", pin.display())).args([
        "timeout",
        &secs.to_string(),
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        url,
    ]);
    output(c)
}

/// The client address the uplink's CGI printed (httpd reports it IPv4-mapped).
fn client_addr(cgi_out: &str) -> String {
    cgi_out
        .trim()
        .trim_start_matches("[::ffff:")
        .trim_end_matches(']')
        .to_owned()
}

/// `wget` from the test's "host" namespace.
fn wget_host(url: &str, secs: u32) -> Result<String, String> {
    let mut c = Command::new("timeout");
    c.args([&secs.to_string(), "busybox", "wget", "-q", "-O", "-", url]);
    output(c)
}

fn spec(project: &str, name: &str) -> NetworkSpec {
    NetworkSpec {
        project: project.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// A container: a pinned netns attached to the given networks, in order.
async fn container(
    mgr: &NetworkManager,
    id: &str,
    nets: &[(&NetworkInfo, Option<Ipv4Addr>)],
) -> (PathBuf, Vec<Ipv4Addr>) {
    let pin = mgr.netns_path(id);
    create_netns(&pin).await.expect("create netns");
    let mut ips = Vec::new();
    for (i, (net, ip)) in nets.iter().enumerate() {
        let a = mgr
            .attach(net, &pin, id, i as u32, *ip, None)
            .await
            .unwrap_or_else(|e| panic!("attach {id} to {}: {e}", net.name));
        assert_eq!(a.ifname, format!("eth{i}"));
        ips.push(a.ip);
    }
    (pin, ips)
}

fn www(root: &Path, name: &str, body: &str) -> PathBuf {
    let dir = root.join("www").join(name);
    support::write_file(&dir, "index.html", body);
    dir
}

/// Links, nft tables and pins berth left in this namespace.
async fn leftovers(mgr: &NetworkManager, root: &Path) -> Vec<String> {
    let mut out: Vec<String> = mgr
        .links()
        .link_names()
        .await
        .expect("links")
        .into_iter()
        .filter(|n| n.starts_with("bt") || n.starts_with("bv"))
        .collect();
    let nft = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    out.extend(
        String::from_utf8_lossy(&nft.stdout)
            .lines()
            .filter(|l| l.contains("berth"))
            .map(str::to_owned),
    );
    if let Ok(rd) = std::fs::read_dir(root.join("netns")) {
        out.extend(rd.flatten().map(|e| e.path().display().to_string()));
    }
    out.extend(
        mgr.list()
            .expect("records")
            .into_iter()
            .map(|r| format!("record {}", r.name)),
    );
    out
}

#[test]
fn same_project_reaches_by_name_alias_and_container_name() {
    crate::require_root!();
    let env = TestEnv::new("net-reach");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root).expect("manager");
        let p = env.project.clone();
        // An INPUT DROP policy (ufw, firewalld) would cut containers off the embedded DNS:
        // scoped accepts for port 53 on our bridges are added, and removed on teardown.
        sh("iptables", &["-P", "INPUT", "DROP"]);
        let net = mgr
            .ensure_network(&spec(&p, &format!("{p}_default")))
            .await
            .expect("network");
        // Default pool: the first Docker default subnet, the gateway its first address.
        assert_eq!(net.subnet.to_string(), "172.17.0.0/16");
        assert_eq!(net.gateway, Ipv4Addr::new(172, 17, 0, 1));

        let (a, _) = container(&mgr, "a1", &[(&net, None)]).await;
        let (b, b_ips) = container(&mgr, "b1", &[(&net, None)]).await;

        let reg = Registry::new(&p);
        reg.add(
            &net.name,
            "b1",
            b_ips[0],
            &["b".into(), format!("{p}-b-1"), "bee".into()],
        );
        let dns = DnsServer::spawn(
            SocketAddr::new(net.gateway.into(), 53),
            &net.name,
            reg.clone(),
            Upstream::None,
        )
        .await
        .expect("dns");

        let _web = httpd(&b, &www(&env.root, "b", "hello from b"), 8080);
        for name in [
            "b".to_string(),
            "bee".into(),
            format!("{p}-b-1"),
            format!("b.{p}"),
        ] {
            let ips = nslookup(&a, &name, net.gateway).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ips, b_ips, "{name}");
        }
        let body = eventually(Duration::from_secs(5), || {
            wget_in(&a, &format!("http://{}:8080/", b_ips[0]), 2)
        });
        assert_eq!(body.trim(), "hello from b");
        // Scaled: a second replica of `b` makes two A records; the in-memory update is
        // seen by the next query.
        reg.add(
            &net.name,
            "b2",
            Ipv4Addr::new(172, 17, 0, 99),
            &["b".into()],
        );
        let mut both = vec![b_ips[0], Ipv4Addr::new(172, 17, 0, 99)];
        both.sort();
        assert_eq!(nslookup(&a, "b", net.gateway).unwrap(), both);
        reg.remove_container("b2");
        // Unknown names of the project are NXDOMAIN and never forwarded.
        let err = nslookup(&a, "nosuch", net.gateway).unwrap_err();
        assert!(err.contains("NXDOMAIN"), "{err}");

        dns.shutdown().await;
        mgr.teardown_project(&p).await.expect("teardown");
        let rules = output({
            let mut c = Command::new("iptables");
            c.args(["-S", "INPUT"]);
            c
        })
        .unwrap();
        assert!(!rules.contains("berth:"), "{rules}");
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
        // Idempotent.
        mgr.teardown_project(&p).await.expect("second teardown");
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

#[test]
fn projects_are_isolated_and_dns_is_per_network() {
    crate::require_root!();
    let env = TestEnv::new("net-iso");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root).expect("manager");
        let p1 = format!("{}a", env.project);
        let p2 = format!("{}b", env.project);
        let front = mgr
            .ensure_network(&spec(&p1, &format!("{p1}_front")))
            .await
            .expect("front");
        let back = mgr
            .ensure_network(&spec(&p1, &format!("{p1}_back")))
            .await
            .expect("back");
        let other = mgr
            .ensure_network(&spec(&p2, &format!("{p2}_default")))
            .await
            .expect("other");
        // Three distinct default subnets.
        assert_eq!(
            [front.subnet, back.subnet, other.subnet].map(|s| s.to_string()),
            ["172.17.0.0/16", "172.18.0.0/16", "172.19.0.0/16"]
        );

        // web on front only, app on both, db on back only; x in the other project.
        let (web, web_ips) = container(&mgr, "web1", &[(&front, None)]).await;
        let (app, app_ips) = container(&mgr, "app1", &[(&front, None), (&back, None)]).await;
        let (db, db_ips) = container(&mgr, "db1", &[(&back, None)]).await;
        let (x, x_ips) = container(&mgr, "x1", &[(&other, None)]).await;

        let reg1 = Registry::new(&p1);
        reg1.add(&front.name, "web1", web_ips[0], &["web".into()]);
        reg1.add(&front.name, "app1", app_ips[0], &["app".into()]);
        reg1.add(&back.name, "app1", app_ips[1], &["app".into()]);
        reg1.add(&back.name, "db1", db_ips[0], &["db".into()]);
        let reg2 = Registry::new(&p2);
        reg2.add(&other.name, "x1", x_ips[0], &["x".into()]);
        let d_front = DnsServer::spawn(
            SocketAddr::new(front.gateway.into(), 53),
            &front.name,
            reg1.clone(),
            Upstream::None,
        )
        .await
        .expect("dns front");
        let d_back = DnsServer::spawn(
            SocketAddr::new(back.gateway.into(), 53),
            &back.name,
            reg1.clone(),
            Upstream::None,
        )
        .await
        .expect("dns back");
        let d_other = DnsServer::spawn(
            SocketAddr::new(other.gateway.into(), 53),
            &other.name,
            reg2,
            Upstream::None,
        )
        .await
        .expect("dns other");

        // A peer on two networks resolves to the address on the asker's network only.
        assert_eq!(
            nslookup(&web, "app", front.gateway).unwrap(),
            vec![app_ips[0]]
        );
        assert_eq!(
            nslookup(&db, "app", back.gateway).unwrap(),
            vec![app_ips[1]]
        );
        // Not sharing a network: not resolvable.
        assert!(nslookup(&web, "db", front.gateway)
            .unwrap_err()
            .contains("NXDOMAIN"));
        // The other project's names are not visible, not even by its project suffix.
        assert!(nslookup(&web, "x", front.gateway)
            .unwrap_err()
            .contains("NXDOMAIN"));
        // Another project's domain is not ours: forwarded (here: no upstream, SERVFAIL).
        let err = nslookup(&web, &format!("x.{p2}"), front.gateway).unwrap_err();
        assert!(!err.contains(&x_ips[0].to_string()), "{err}");
        assert_eq!(nslookup(&x, "x", other.gateway).unwrap(), x_ips);

        // Reachability: same network yes; across projects and across networks no.
        let _h_x = httpd(&x, &www(&env.root, "x", "x"), 8080);
        let _h_db = httpd(&db, &www(&env.root, "db", "db"), 8080);
        let _h_app = httpd(&app, &www(&env.root, "app", "app"), 8080);
        eventually(Duration::from_secs(5), || {
            wget_in(&web, &format!("http://{}:8080/", app_ips[0]), 2)
        });
        eventually(Duration::from_secs(5), || {
            wget_in(&app, &format!("http://{}:8080/", db_ips[0]), 2)
        });
        // The positive checks above prove the servers are up; these must time out.
        assert!(
            wget_in(&web, &format!("http://{}:8080/", x_ips[0]), 1).is_err(),
            "web reached the other project"
        );
        assert!(
            wget_in(&x, &format!("http://{}:8080/", app_ips[0]), 1).is_err(),
            "other project reached app"
        );
        assert!(
            wget_in(&web, &format!("http://{}:8080/", db_ips[0]), 1).is_err(),
            "front reached back"
        );

        // Recreated with a new address: the next answer is the new one, no stale record.
        reg1.add(
            &back.name,
            "db1",
            Ipv4Addr::new(172, 18, 0, 200),
            &["db".into()],
        );
        assert_eq!(
            nslookup(&app, "db", back.gateway).unwrap(),
            vec![Ipv4Addr::new(172, 18, 0, 200)]
        );
        reg1.remove_container("db1");
        assert!(nslookup(&app, "db", back.gateway)
            .unwrap_err()
            .contains("NXDOMAIN"));

        for d in [d_front, d_back, d_other] {
            d.shutdown().await;
        }
        mgr.teardown_project(&p1).await.expect("teardown p1");
        mgr.teardown_project(&p2).await.expect("teardown p2");
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

/// The "internet": a namespace behind a veth from the host, 10.250.0.2, running an httpd
/// whose CGI prints the client address it sees. It has no route to container subnets, so
/// only masqueraded traffic can get an answer.
struct Uplink {
    _httpd: Proc,
    pin: PathBuf,
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", "btup0"]).status();
        let _ = remove_netns(&self.pin);
    }
}

async fn uplink(root: &Path) -> Uplink {
    let pin = root.join("uplink-ns");
    create_netns(&pin).await.expect("uplink netns");
    let dir = root.join("www").join("uplink");
    let cgi = support::write_file(
        &dir.join("cgi-bin"),
        "ip",
        "#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    );
    sh("chmod", &["+x", &cgi.to_string_lossy()]);
    let httpd = httpd(&pin, &dir, 9000);
    let pid = httpd.0.id().to_string();
    sh(
        "ip",
        &[
            "link", "add", "btup0", "type", "veth", "peer", "name", "btup1",
        ],
    );
    sh("ip", &["link", "set", "btup1", "netns", &pid]);
    sh("ip", &["addr", "add", "10.250.0.1/24", "dev", "btup0"]);
    sh("ip", &["link", "set", "btup0", "up"]);
    let p = pin.to_string_lossy().to_string();
    sh(
        "nsenter",
        &[
            &format!("--net={p}"),
            "ip",
            "addr",
            "add",
            "10.250.0.2/24",
            "dev",
            "btup1",
        ],
    );
    sh(
        "nsenter",
        &[&format!("--net={p}"), "ip", "link", "set", "btup1", "up"],
    );
    Uplink { _httpd: httpd, pin }
}

#[test]
fn egress_is_masqueraded_and_internal_networks_have_none() {
    crate::require_root!();
    let env = TestEnv::new("net-egress");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root).expect("manager");
        let p = env.project.clone();
        let up = uplink(&env.root).await;
        // The host sees the uplink directly.
        let seen = eventually(Duration::from_secs(5), || {
            wget_host("http://10.250.0.2:9000/cgi-bin/ip", 2)
        });
        assert_eq!(client_addr(&seen), "10.250.0.1");

        let net = mgr
            .ensure_network(&NetworkSpec {
                subnet: Some("10.77.0.0/24".parse().unwrap()),
                gateway: Some(Ipv4Addr::new(10, 77, 0, 254)),
                ip_range: Some("10.77.0.64/26".parse().unwrap()),
                ..spec(&p, &format!("{p}_default"))
            })
            .await
            .expect("network");
        assert_eq!(net.gateway, Ipv4Addr::new(10, 77, 0, 254));
        let internal = mgr
            .ensure_network(&NetworkSpec {
                internal: true,
                ..spec(&p, &format!("{p}_private"))
            })
            .await
            .expect("internal network");
        let (c, c_ips) = container(&mgr, "c1", &[(&net, None)]).await;
        assert_eq!(
            c_ips,
            vec![Ipv4Addr::new(10, 77, 0, 64)],
            "first address of ip_range"
        );
        let (i, i_ips) = container(&mgr, "i1", &[(&internal, None)]).await;

        // Egress leaves with the host's address (masquerade), never the container's.
        let seen = wget_in(&c, "http://10.250.0.2:9000/cgi-bin/ip", 3).expect("egress");
        assert_eq!(client_addr(&seen), "10.250.0.1");

        // Internal: no default route is installed; even with one added by hand (a
        // container with NET_ADMIN), the firewall drops the traffic.
        let err = wget_in(&i, "http://10.250.0.2:9000/cgi-bin/ip", 1).unwrap_err();
        assert!(!err.is_empty());
        sh(
            "nsenter",
            &[
                &format!("--net={}", i.display()),
                "ip",
                "route",
                "add",
                "default",
                "via",
                &internal.gateway.to_string(),
            ],
        );
        assert!(
            wget_in(&i, "http://10.250.0.2:9000/cgi-bin/ip", 1).is_err(),
            "internal network reached the uplink"
        );
        // ...while the internal network itself works.
        let _h = httpd(&i, &www(&env.root, "i", "inside"), 8080);
        let (j, _) = container(&mgr, "j1", &[(&internal, None)]).await;
        let body = eventually(Duration::from_secs(5), || {
            wget_in(&j, &format!("http://{}:8080/", i_ips[0]), 2)
        });
        assert_eq!(body.trim(), "inside");

        // Internal first, then a normal network: the default route comes from the first
        // non-internal one, so egress works through eth1.
        let (k, _) = container(&mgr, "k1", &[(&internal, None), (&net, None)]).await;
        let routes = output({
            let mut c = Command::new("nsenter");
            c.args([
                &format!("--net={}", k.display()),
                "ip",
                "route",
                "show",
                "default",
            ]);
            c
        })
        .unwrap();
        assert!(
            routes
                .trim()
                .starts_with("default via 10.77.0.254 dev eth1")
                && routes.lines().count() == 1,
            "{routes}"
        );
        let seen = wget_in(&k, "http://10.250.0.2:9000/cgi-bin/ip", 3).expect("egress via eth1");
        assert_eq!(client_addr(&seen), "10.250.0.1");

        // A FORWARD DROP policy (as Docker leaves it) is detected and worked around with
        // scoped accepts, which teardown removes.
        sh("iptables", &["-P", "FORWARD", "DROP"]);
        assert!(
            wget_in(&c, "http://10.250.0.2:9000/cgi-bin/ip", 1).is_err(),
            "DROP policy not in effect"
        );
        mgr.ensure_network(&spec(&p, &format!("{p}_default")))
            .await
            .expect("re-ensure");
        let seen =
            wget_in(&c, "http://10.250.0.2:9000/cgi-bin/ip", 3).expect("egress with FORWARD DROP");
        assert_eq!(client_addr(&seen), "10.250.0.1");

        mgr.teardown_project(&p).await.expect("teardown");
        let rules = output({
            let mut c = Command::new("iptables");
            c.args(["-S", "FORWARD"]);
            c
        })
        .unwrap();
        assert!(!rules.contains("berth:"), "{rules}");
        drop(up);
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

/// A UDP echo server inside `pin` (busybox nc has no UDP): a std thread that enters the
/// namespace, answers `n` datagrams, and ends.
fn udp_echo(pin: &Path, port: u16) -> std::thread::JoinHandle<()> {
    let f = std::fs::File::open(pin).expect("open pin");
    let sock_ready = std::sync::mpsc::channel();
    let (tx, rx) = sock_ready;
    let h = std::thread::spawn(move || {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
            if &buf[..n] == b"bye" {
                break;
            }
        }
    });
    rx.recv().expect("udp echo ready");
    h
}

/// Sends one UDP datagram from inside `pin` (a std thread that enters the namespace).
fn udp_send_from(pin: &Path, dst: SocketAddr) {
    let f = std::fs::File::open(pin).expect("open pin");
    std::thread::spawn(move || {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let _ = s.send_to(b"probe", dst);
    })
    .join()
    .expect("udp sender");
}

#[test]
fn published_ports_localhost_udp_random_and_conflicts() {
    crate::require_root!();
    let env = TestEnv::new("net-ports");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root).expect("manager");
        let p = env.project.clone();
        let net = mgr
            .ensure_network(&spec(&p, &format!("{p}_default")))
            .await
            .expect("network");
        let (c, c_ips) = container(&mgr, "web1", &[(&net, None)]).await;
        let (peer, _) = container(&mgr, "peer1", &[(&net, None)]).await;
        let _h = httpd(&c, &www(&env.root, "web", "published"), 8080);
        let echo = udp_echo(&c, 5300);

        let bind =
            |host_ip: Option<Ipv4Addr>, host: Option<u16>, cport: u16, protocol| PortBinding {
                container: "web1".into(),
                host_ip,
                host_port: host.map(PortRange::single),
                container_ip: c_ips[0],
                container_port: PortRange::single(cport),
                protocol,
            };
        let fixed = support::free_port();
        let published = mgr
            .publish(
                &p,
                &[
                    bind(Some(Ipv4Addr::LOCALHOST), Some(fixed), 8080, Protocol::Tcp),
                    bind(None, None, 8080, Protocol::Tcp),
                    bind(None, Some(fixed), 5300, Protocol::Udp),
                ],
            )
            .await
            .expect("publish");
        assert_eq!(published.len(), 3);
        assert_eq!(published[0].host_port, fixed);
        let random = published[1].host_port;
        assert!(random >= 1024 && random != fixed, "random port {random}");
        assert_eq!(mgr.ports(&p).unwrap().len(), 3, "recorded for `berth port`");

        // 127.0.0.1:P → container (route_localnet + masquerade), and the random port.
        let body = eventually(Duration::from_secs(5), || {
            wget_host(&format!("http://127.0.0.1:{fixed}/"), 2)
        });
        assert_eq!(body.trim(), "published");
        let body = wget_host(&format!("http://127.0.0.1:{random}/"), 2).expect("random port");
        assert_eq!(body.trim(), "published");
        // Hairpin: another container through the gateway's published port.
        let body =
            wget_in(&peer, &format!("http://{}:{random}/", net.gateway), 2).expect("hairpin");
        assert_eq!(body.trim(), "published");

        // UDP through the published port.
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.send_to(b"ping", ("127.0.0.1", fixed)).unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = u
            .recv_from(&mut buf)
            .expect("udp echo through published port");
        assert_eq!(&buf[..n], b"ping");
        let _ = u.send_to(b"bye", ("127.0.0.1", fixed));
        let _ = echo.join();

        // A host port already taken: clear error naming it, nothing changed.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tport = taken.local_addr().unwrap().port();
        let before = Command::new("nft")
            .args([
                "list",
                "table",
                "inet",
                &berth::network::firewall::table_name(&p),
            ])
            .output()
            .unwrap()
            .stdout;
        let err = mgr
            .publish(
                &p,
                &[
                    bind(None, Some(18181), 8081, Protocol::Tcp),
                    bind(Some(Ipv4Addr::LOCALHOST), Some(tport), 8080, Protocol::Tcp),
                ],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, NetworkError::PortInUse { port, .. } if port == tport),
            "{err}"
        );
        assert!(err.to_string().contains(&tport.to_string()), "{err}");
        let after = Command::new("nft")
            .args([
                "list",
                "table",
                "inet",
                &berth::network::firewall::table_name(&p),
            ])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(before, after, "ruleset changed by a failed publish");
        assert_eq!(
            mgr.ports(&p).unwrap().len(),
            3,
            "records changed by a failed publish"
        );

        // A container cannot reach a host service bound to 127.0.0.1, even when it routes
        // 127.0.0.0/8 out of eth0 itself (what NET_ADMIN allows). UDP, because one
        // datagram is enough to hurt (CVE-2020-8558) and needs no answer.
        let secret = UdpSocket::bind("127.0.0.1:0").unwrap();
        secret
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let sport = secret.local_addr().unwrap().port();
        let cp = format!("--net={}", peer.display());
        sh(
            "nsenter",
            &[&cp, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
        );
        sh(
            "nsenter",
            &[
                &cp,
                "ip",
                "route",
                "del",
                "local",
                "127.0.0.0/8",
                "dev",
                "lo",
                "table",
                "local",
            ],
        );
        sh(
            "nsenter",
            &[
                &cp,
                "ip",
                "route",
                "del",
                "local",
                "127.0.0.1",
                "dev",
                "lo",
                "table",
                "local",
            ],
        );
        sh(
            "nsenter",
            &[
                &cp,
                "ip",
                "route",
                "add",
                "127.0.0.1/32",
                "via",
                &net.gateway.to_string(),
                "dev",
                "eth0",
            ],
        );
        let reached = |tries: u32| {
            let mut buf = [0u8; 16];
            (0..tries).any(|_| {
                udp_send_from(&peer, SocketAddr::from((Ipv4Addr::LOCALHOST, sport)));
                secret.recv_from(&mut buf).is_ok()
            })
        };
        assert!(!reached(3), "container reached a host 127.0.0.1 service");
        // The raw drop rule is what stops it: without the rule the probe gets through,
        // so the check above can fail.
        sh(
            "nft",
            &[
                "flush",
                "chain",
                "inet",
                &berth::network::firewall::table_name(&p),
                "raw_prerouting",
            ],
        );
        assert!(
            reached(10),
            "the probe is not sensitive: it never arrives even without the rule"
        );

        let flows = |port: u16| {
            let out = Command::new("conntrack")
                .args(["-L", "-p", "udp", "--orig-port-dst", &port.to_string()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        assert!(
            flows(fixed) > 0,
            "no UDP flow recorded: the conntrack check would be vacuous"
        );
        mgr.teardown_project(&p).await.expect("teardown");
        assert_eq!(flows(fixed), 0, "UDP conntrack entries left after teardown");
        assert!(mgr.ports(&p).unwrap().is_empty());
        assert!(
            wget_host(&format!("http://127.0.0.1:{fixed}/"), 1).is_err(),
            "port still published"
        );
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

#[test]
fn ipam_conflicts_exhaustion_and_explicit_addresses() {
    crate::require_root!();
    let env = TestEnv::new("net-ipam");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root).expect("manager");
        let p = env.project.clone();
        // A subnet routed on the host is skipped by the default pool.
        sh("ip", &["link", "add", "btdummy0", "type", "bridge"]);
        sh("ip", &["addr", "add", "172.17.5.1/24", "dev", "btdummy0"]);
        sh("ip", &["link", "set", "btdummy0", "up"]);
        let n1 = mgr
            .ensure_network(&spec(&p, &format!("{p}_default")))
            .await
            .expect("n1");
        assert_eq!(n1.subnet.to_string(), "172.18.0.0/16");
        // Explicit overlapping subnet: clear error naming both.
        let err = mgr
            .ensure_network(&NetworkSpec {
                subnet: Some("172.18.3.0/24".parse().unwrap()),
                ..spec(&p, &format!("{p}_other"))
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("172.18.3.0/24") && err.to_string().contains("172.18.0.0/16"),
            "{err}"
        );
        // A tiny network: ipv4_address honoured, then exhaustion.
        let tiny = mgr
            .ensure_network(&NetworkSpec {
                subnet: Some("10.66.0.0/29".parse().unwrap()),
                ..spec(&p, &format!("{p}_tiny"))
            })
            .await
            .expect("tiny");
        // Same name, different config: refused with a clear error, nothing changed.
        let err = mgr
            .ensure_network(&NetworkSpec {
                internal: true,
                ..spec(&p, &format!("{p}_tiny"))
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetworkError::ConfigMismatch {
                    field: "internal",
                    ..
                }
            ),
            "{err}"
        );
        let (_c, ips) = container(&mgr, "c1", &[(&tiny, Some(Ipv4Addr::new(10, 66, 0, 6)))]).await;
        assert_eq!(ips, vec![Ipv4Addr::new(10, 66, 0, 6)]);
        let pin2 = mgr.netns_path("c2");
        create_netns(&pin2).await.unwrap();
        let err = mgr
            .attach(
                &tiny,
                &pin2,
                "c2",
                0,
                Some(Ipv4Addr::new(10, 66, 0, 6)),
                None,
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("10.66.0.6 is already in use"),
            "{err}"
        );
        for k in 0..4 {
            mgr.attach(&tiny, &pin2, "c2", k, None, None)
                .await
                .expect("attach within range");
        }
        let err = mgr
            .attach(&tiny, &pin2, "c2", 4, None, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no free address left in 10.66.0.0/29"),
            "{err}"
        );
        // Leases survive a new manager (a restarted supervisor): no double assignment.
        drop(mgr);
        let mgr = NetworkManager::new(&env.root).expect("manager again");
        let rec = mgr.record(&tiny.name).unwrap().unwrap();
        assert_eq!(rec.leases.len(), 5);
        // Removing a network with endpoints is refused; detach then remove works.
        let err = mgr.remove_network(&tiny.name).await.unwrap_err();
        assert!(matches!(err, NetworkError::InUse { .. }), "{err}");
        mgr.detach(&tiny.name, "c1").await.unwrap();
        mgr.detach(&tiny.name, "c2").await.unwrap();
        // The netns belongs to the container, not to a network: the engine removes it.
        remove_netns(&_c).unwrap();
        remove_netns(&pin2).unwrap();
        mgr.remove_network(&tiny.name)
            .await
            .expect("remove network");
        assert!(mgr.network(&tiny.name).unwrap().is_none());
        mgr.teardown_project(&p).await.expect("teardown");
        sh("ip", &["link", "del", "btdummy0"]);
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

#[test]
fn teardown_after_crash_is_state_driven_and_attach_is_fast() {
    crate::require_root!();
    let env = TestEnv::new("net-crash");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let p = env.project.clone();
        let mut times = Vec::new();
        {
            // A "supervisor" that sets everything up and then vanishes without cleanup.
            let mgr = NetworkManager::new(&env.root).expect("manager");
            let net = mgr
                .ensure_network(&spec(&p, &format!("{p}_default")))
                .await
                .expect("network");
            for k in 0..20 {
                let id = format!("c{k}");
                let pin = mgr.netns_path(&id);
                create_netns(&pin).await.unwrap();
                let t = Instant::now();
                mgr.attach(&net, &pin, &id, 0, None, None)
                    .await
                    .expect("attach");
                times.push(t.elapsed());
            }
            let ip = mgr
                .record(&net.name)
                .unwrap()
                .unwrap()
                .leases
                .into_keys()
                .next()
                .unwrap();
            mgr.publish(
                &p,
                &[PortBinding {
                    container: "c0".into(),
                    host_ip: None,
                    host_port: None,
                    container_ip: ip,
                    container_port: PortRange::single(80),
                    protocol: Protocol::Udp,
                }],
            )
            .await
            .expect("publish");
        }
        times.sort();
        let median = times[times.len() / 2];
        eprintln!(
            "attach times: median {median:?}, max {:?}",
            times[times.len() - 1]
        );
        // Target is 2 ms; allow for a loaded 2-core box but catch gross regressions.
        assert!(
            median < Duration::from_millis(10),
            "median attach {median:?}"
        );

        // Part of the state is already gone (an admin deleted a veth); teardown still
        // removes the rest and succeeds.
        let mgr = NetworkManager::new(&env.root).expect("fresh manager");
        let veth = mgr.list().unwrap()[0]
            .leases
            .values()
            .next()
            .unwrap()
            .host_veth
            .clone()
            .unwrap();
        sh("ip", &["link", "del", &veth]);
        assert!(!leftovers(&mgr, &env.root).await.is_empty());
        let t = Instant::now();
        mgr.teardown_project(&p).await.expect("teardown");
        eprintln!("teardown of 20 attachments: {:?}", t.elapsed());
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
        mgr.teardown_project(&p).await.expect("second teardown");

        // A bridge left without its record (crash between the two) is replaced, not
        // adopted with its stale address.
        let name = format!("{p}_default");
        let br = berth::network::link::bridge_name(&name);
        sh("ip", &["link", "add", &br, "type", "bridge"]);
        sh("ip", &["addr", "add", "10.99.0.1/24", "dev", &br]);
        let net = mgr.ensure_network(&spec(&p, &name)).await.expect("network");
        let addrs = output({
            let mut c = Command::new("ip");
            c.args(["-4", "-o", "addr", "show", "dev", &br]);
            c
        })
        .unwrap();
        assert_eq!(addrs.lines().count(), 1, "{addrs}");
        assert!(
            addrs.contains(&format!("{}/{}", net.gateway, net.subnet.prefix_len())),
            "{addrs}"
        );
        mgr.teardown_project(&p).await.expect("third teardown");
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

#[test]
fn dns_forwards_to_a_stub_and_answers_aaaa_empty() {
    crate::require_root!();
    let _lock = support::kernel_lock();
    let _ns = support::enter_fresh_netns();
    let rt = runtime();
    rt.block_on(async {
        // The stub "upstream": another DnsServer with its own registry on 127.0.0.1.
        let stub_reg = Registry::new("stub");
        stub_reg.add(
            "n",
            "s",
            Ipv4Addr::new(192, 0, 2, 7),
            &["outside.example".into()],
        );
        let stub = DnsServer::spawn(
            "127.0.0.1:0".parse().unwrap(),
            "n",
            stub_reg,
            Upstream::None,
        )
        .await
        .unwrap();
        let reg = Registry::new("proj");
        reg.add("net", "c", Ipv4Addr::new(10, 0, 0, 2), &["web".into()]);
        let fwd = DnsServer::spawn(
            "127.0.0.1:0".parse().unwrap(),
            "net",
            reg.clone(),
            Upstream::Servers(vec![stub.local_addr()]),
        )
        .await
        .unwrap();
        let none = DnsServer::spawn("127.0.0.1:0".parse().unwrap(), "net", reg, Upstream::None)
            .await
            .unwrap();

        let q = |server: SocketAddr, name: &str, qtype: u16| -> (u8, Vec<Ipv4Addr>, u16) {
            raw_query(server, name, qtype)
        };
        let fwd_addr = fwd.local_addr();
        let none_addr = none.local_addr();
        let r = tokio::task::spawn_blocking(move || {
            (
                q(fwd_addr, "outside.example", 1),
                q(fwd_addr, "web", 1),
                q(fwd_addr, "web", 28),
                q(none_addr, "outside.example", 1),
                q(fwd_addr, "nosuch", 1),
                raw_query_over(fwd_addr, "web", 1, true),
                raw_query_over(fwd_addr, "outside.example", 1, true),
            )
        })
        .await
        .unwrap();
        assert_eq!(r.0 .0, 0, "forwarded NOERROR");
        assert_eq!(r.0 .1, vec![Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(
            (r.1 .0, r.1 .1.clone()),
            (0, vec![Ipv4Addr::new(10, 0, 0, 2)])
        );
        assert!(r.1 .2 & 0x0400 != 0, "local answers are authoritative");
        assert_eq!(
            (r.2 .0, r.2 .1.len()),
            (0, 0),
            "AAAA of a known name: empty NOERROR"
        );
        assert_eq!(r.3 .0, 2, "no upstream: SERVFAIL");
        assert_eq!(r.4 .0, 3, "unknown single label: NXDOMAIN");
        assert_eq!(
            r.5 .1,
            vec![Ipv4Addr::new(10, 0, 0, 2)],
            "local answer over TCP"
        );
        assert_eq!(
            r.6 .1,
            vec![Ipv4Addr::new(192, 0, 2, 7)],
            "forwarded over TCP"
        );

        // Latency from a client: sequential queries, median.
        let (med, qps) = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            let t0 = Instant::now();
            for _ in 0..2000 {
                let t = Instant::now();
                q(fwd_addr, "web", 1);
                v.push(t.elapsed());
            }
            let qps = 2000.0 / t0.elapsed().as_secs_f64();
            v.sort();
            (v[v.len() / 2], qps)
        })
        .await
        .unwrap();
        eprintln!(
            "dns sequential: median {med:?}, {qps:.0} q/s (one client, new socket per query)"
        );
        assert!(med < Duration::from_millis(5), "dns median {med:?}");
        for s in [stub, fwd, none] {
            s.shutdown().await;
        }
    });
}

/// A minimal DNS client: one query, returns (rcode, A addresses, flags).
fn raw_query(server: SocketAddr, name: &str, qtype: u16) -> (u8, Vec<Ipv4Addr>, u16) {
    raw_query_over(server, name, qtype, false)
}

/// Like `raw_query`, over UDP or TCP (2-byte length prefix, RFC 1035 §4.2.2).
fn raw_query_over(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    tcp: bool,
) -> (u8, Vec<Ipv4Addr>, u16) {
    use std::io::{Read, Write};
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    let mut buf = vec![0u8; 1500];
    let n = if tcp {
        let mut s = std::net::TcpStream::connect(server).expect("tcp connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&q).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("dns answer length");
        let n = u16::from_be_bytes(len) as usize;
        s.read_exact(&mut buf[..n]).expect("dns answer");
        n
    } else {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(&q, server).unwrap();
        s.recv_from(&mut buf).expect("dns answer").0
    };
    let b = &buf[..n];
    assert_eq!(&b[..2], &[0x12, 0x34]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    // Skip the question.
    let mut i = 12;
    while b[i] != 0 {
        i += 1 + b[i] as usize;
    }
    i += 5;
    let mut ips = Vec::new();
    for _ in 0..an {
        // Name: a pointer (2 bytes) or labels.
        if b[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while b[i] != 0 {
                i += 1 + b[i] as usize;
            }
            i += 1;
        }
        let rtype = u16::from_be_bytes([b[i], b[i + 1]]);
        let rdlen = u16::from_be_bytes([b[i + 8], b[i + 9]]) as usize;
        i += 10;
        if rtype == 1 && rdlen == 4 {
            ips.push(Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]));
        }
        i += rdlen;
    }
    ((flags & 0x000f) as u8, ips, flags)
}

#[test]
fn cli_network_create_ls_inspect_rm_prune() {
    crate::require_root!();
    let env = TestEnv::new("net-cli");
    let _ns = support::enter_fresh_netns();
    let name = format!("{}_mynet", env.project);
    let (rc, id, err) = env.run(&[
        "network",
        "create",
        &name,
        "--subnet",
        "10.5.0.0/24",
        "--internal",
        "--label",
        "a=b",
        "-o",
        "com.docker.network.driver.mtu=1400",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(id.trim().len(), 64);
    let (rc, _, err) = env.run(&["network", "create", &name]);
    assert_ne!(rc, 0);
    assert!(err.contains("already exists"), "{err}");
    let (rc, _, err) = env.run(&["network", "create", "x", "-d", "macvlan"]);
    assert!(rc != 0 && err.contains("not supported"), "{err}");

    let (rc, ls, _) = env.run(&["network", "ls"]);
    assert_eq!(rc, 0);
    assert!(ls.starts_with("NETWORK ID"), "{ls}");
    assert!(ls.contains(&name) && ls.contains(&id.trim()[..12]), "{ls}");
    let (rc, js, _) = env.run(&["network", "inspect", &name]);
    assert_eq!(rc, 0);
    let v: serde_json::Value = serde_json::from_str(&js).expect("inspect json");
    assert_eq!(v[0]["IPAM"]["Config"][0]["Subnet"], "10.5.0.0/24");
    assert_eq!(v[0]["IPAM"]["Config"][0]["Gateway"], "10.5.0.1");
    assert_eq!(v[0]["Internal"], true);
    assert_eq!(v[0]["Options"]["com.docker.network.driver.mtu"], "1400");
    let bridge = v[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = Command::new("ip")
        .args(["-d", "link", "show", &bridge])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("mtu 1400"),
        "bridge missing or wrong mtu"
    );
    let (rc, _, err) = env.run(&["network", "inspect", "nosuch"]);
    assert_ne!(rc, 0);
    assert!(err.contains("No such network: nosuch"), "{err}");

    let other = format!("{}_other", env.project);
    assert_eq!(env.run(&["network", "create", &other]).0, 0);
    let (rc, out, _) = env.run(&["network", "rm", &name]);
    assert_eq!((rc, out.trim()), (0, name.as_str()));
    let (rc, out, _) = env.run(&["network", "prune", "-f"]);
    assert_eq!(rc, 0);
    assert!(
        out.contains("Deleted Networks:") && out.contains(&other),
        "{out}"
    );
    let (_, ls, _) = env.run(&["network", "ls", "-q"]);
    assert_eq!(ls.trim(), "");
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("bt-"),
        "bridge left behind"
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("berth"),
        "nft table left behind"
    );
    drop(_ns);
    env.finish();
}

#[test]
fn userland_proxy_publishes_tcp_and_udp_without_nftables() {
    crate::require_root!();
    let env = TestEnv::new("net-proxy");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root)
            .expect("manager")
            .with_port_backend(PortBackend::Userland);
        let p = env.project.clone();
        let net = mgr
            .ensure_network(&spec(&p, &format!("{p}_default")))
            .await
            .expect("network");
        let tables = output({
            let mut c = Command::new("nft");
            c.args(["list", "tables"]);
            c
        })
        .unwrap();
        assert!(
            !tables.contains("berth"),
            "userland backend wrote nft rules: {tables}"
        );
        let (c, ips) = container(&mgr, "web1", &[(&net, None)]).await;
        let _h = httpd(&c, &www(&env.root, "web", "via proxy"), 8080);
        let echo = udp_echo(&c, 5300);
        let mk = |cport: u16, protocol| PortBinding {
            container: "web1".into(),
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: None,
            container_ip: ips[0],
            container_port: PortRange::single(cport),
            protocol,
        };
        let ports = mgr
            .publish(&p, &[mk(8080, Protocol::Tcp), mk(5300, Protocol::Udp)])
            .await
            .expect("publish");
        let (tcp, udp) = (ports[0].host_port, ports[1].host_port);
        let url = format!("http://127.0.0.1:{tcp}/");
        let body = tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(5), || wget_host(&url, 2))
        })
        .await
        .unwrap();
        assert_eq!(body.trim(), "via proxy");
        let got = tokio::task::spawn_blocking(move || {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            u.send_to(b"ping", ("127.0.0.1", udp)).unwrap();
            let mut buf = [0u8; 16];
            let n = u.recv_from(&mut buf).map(|(n, _)| n).unwrap_or(0);
            let _ = u.send_to(b"bye", ("127.0.0.1", udp));
            buf[..n].to_vec()
        })
        .await
        .unwrap();
        assert_eq!(got, b"ping");
        let _ = echo.join();

        // Unpublish stops the listener: the port is free again.
        mgr.unpublish(&p, "web1").await.expect("unpublish");
        std::net::TcpListener::bind(("127.0.0.1", tcp)).expect("port released after unpublish");
        mgr.teardown_project(&p).await.expect("teardown");
        assert_eq!(leftovers(&mgr, &env.root).await, Vec::<String>::new());
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}

// ---- compose-level network features (berth up / exec / down) ----

/// `berth exec <service> <args>` in `dir`: (exit code, stdout + stderr).
fn exec_in(env: &TestEnv, dir: &Path, service: &str, args: &[&str]) -> (i32, String) {
    let mut a = vec!["exec", service];
    a.extend_from_slice(args);
    let (code, out, err) = env.compose(dir, &a);
    (code, format!("{out}{err}"))
}

/// The first `inet a.b.c.d/` address of `eth0` inside a service's container.
fn eth0_ip(env: &TestEnv, dir: &Path, service: &str) -> String {
    let (code, out) = exec_in(
        env,
        dir,
        service,
        &["ip", "-4", "-o", "addr", "show", "eth0"],
    );
    assert_eq!(code, 0, "ip addr in {service}: {out}");
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no inet address in {out:?}"))
        .to_string()
}

/// `links: ["db:database"]`: the alias resolves (to db's address) only inside the linking
/// container, as on Docker's user-defined networks; others get NXDOMAIN.
#[test]
fn link_aliases_resolve_only_for_the_linking_container() {
    crate::require_root!();
    let env = TestEnv::new("net-links");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "links",
        "services:\n  db:\n    image: busybox\n    command: [sleep, '3600']\n  web:\n    image: busybox\n    links: ['db:database']\n    command: [sleep, '3600']\n  other:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let db_ip = eth0_ip(&env, &dir, "db");
    let (code, out) = exec_in(&env, &dir, "web", &["nslookup", "database"]);
    assert_eq!(code, 0, "nslookup database in web: {out}");
    assert!(
        out.contains(&format!("Address: {db_ip}")),
        "web must resolve the link alias to db ({db_ip}): {out}"
    );
    let (code, out) = exec_in(&env, &dir, "other", &["nslookup", "database"]);
    assert_ne!(code, 0, "the alias must not resolve outside web: {out}");
    assert!(out.contains("NXDOMAIN"), "{out}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `mac_address` at service level and per network set the container's eth MAC.
#[test]
fn mac_address_service_level_and_per_network() {
    crate::require_root!();
    let env = TestEnv::new("net-mac");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "mac",
        "services:\n  a:\n    image: busybox\n    mac_address: '02:42:ac:11:00:99'\n    command: [sleep, '3600']\n  b:\n    image: busybox\n    networks:\n      default:\n        mac_address: '02:00:00:aa:bb:cc'\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    for (svc, want) in [("a", "02:42:ac:11:00:99"), ("b", "02:00:00:aa:bb:cc")] {
        let (code, out) = exec_in(&env, &dir, svc, &["cat", "/sys/class/net/eth0/address"]);
        assert_eq!(code, 0, "{svc}: {out}");
        assert_eq!(out.trim(), want, "MAC of {svc}'s eth0");
    }
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// Reverse lookups of a container address give `<container>.<network>`; an unused
/// address of the project's subnet is NXDOMAIN (answered locally, not SERVFAIL from a
/// forward attempt).
#[test]
fn reverse_lookups_name_containers_and_nxdomain_unknown_subnet_addresses() {
    crate::require_root!();
    let env = TestEnv::new("net-ptr");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "ptr",
        "services:\n  db:\n    image: busybox\n    command: [sleep, '3600']\n  client:\n    image: busybox\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let db_ip = eth0_ip(&env, &dir, "db");
    let (code, out) = exec_in(&env, &dir, "client", &["nslookup", &db_ip]);
    assert_eq!(code, 0, "nslookup {db_ip}: {out}");
    let p = &env.project;
    assert!(
        out.contains(&format!("name = {p}-db-1.{p}_default")),
        "PTR of db: {out}"
    );
    let mut o: Vec<&str> = db_ip.split('.').collect();
    o[3] = "250";
    let unknown = o.join(".");
    let (code, out) = exec_in(&env, &dir, "client", &["nslookup", &unknown]);
    assert_ne!(code, 0, "{unknown} has no container: {out}");
    assert!(out.contains("NXDOMAIN"), "nslookup {unknown}: {out}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `network_mode: host` sees the host's interfaces (here the test's namespace, with a
/// dummy link the test made); `none` has only `lo`; `down` leaves nothing.
#[test]
fn network_mode_host_and_none() {
    crate::require_root!();
    let env = TestEnv::new("net-mode-host");
    let _ns = support::enter_fresh_netns();
    sh("ip", &["link", "add", "hostmark0", "type", "bridge"]);
    env.load_busybox();
    let dir = env.project_dir(
        "modehost",
        "services:\n  h:\n    image: busybox\n    network_mode: host\n    command: [sleep, '3600']\n  n:\n    image: busybox\n    network_mode: none\n    command: [sleep, '3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let (code, out) = exec_in(&env, &dir, "h", &["ip", "-o", "link"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("hostmark0"),
        "host mode must see the host's links: {out}"
    );
    let (code, out) = exec_in(&env, &dir, "n", &["ip", "-o", "link"]);
    assert_eq!(code, 0, "{out}");
    let links: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(links, ["lo"], "none mode must have only lo: {out}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `network_mode: service:x` and `container:<name>` share x's namespace: same address,
/// and x's server answers on 127.0.0.1; `down` leaves nothing.
#[test]
fn network_mode_service_and_container_share_the_namespace() {
    crate::require_root!();
    let env = TestEnv::new("net-mode-share");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "modeshare",
        "services:\n  x:\n    image: busybox\n    container_name: MODEX\n    command: [sh, -c, 'mkdir -p /www && echo shared-ns > /www/index.html && exec httpd -f -p 8080 -h /www']\n  y:\n    image: busybox\n    network_mode: 'service:x'\n    command: [sleep, '3600']\n  z:\n    image: busybox\n    network_mode: 'container:MODEX'\n    depends_on: [x]\n    command: [sleep, '3600']\n"
            .replace("MODEX", &format!("{}-xc", env.project))
            .as_str(),
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let x_ip = eth0_ip(&env, &dir, "x");
    for svc in ["y", "z"] {
        assert_eq!(eth0_ip(&env, &dir, svc), x_ip, "{svc} must have x's eth0");
        let body = eventually(Duration::from_secs(5), || {
            // nc, not wget: `wget -T 2 -O- http://…` against busybox httpd segfaulted
            // (exit 139) under `berth exec` here, in bridge mode too; not investigated.
            let (code, out) = exec_in(
                &env,
                &dir,
                svc,
                &[
                    "sh",
                    "-c",
                    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080",
                ],
            );
            if code == 0 {
                Ok(out)
            } else {
                Err(out)
            }
        });
        assert!(body.contains("shared-ns"), "{svc} → 127.0.0.1:8080: {body}");
    }
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `external_links: [<container of another project>:alias]` on a shared external network:
/// the alias resolves to that container's address inside the linking container (asked
/// through its own project's resolver, on its first network). Also: a second project can
/// come up on an external network whose gateway port 53 the first one's DNS holds.
#[test]
fn external_links_resolve_to_a_container_of_another_project() {
    crate::require_root!();
    let env = TestEnv::new("net-extlinks");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let p = env.project.clone();
    let shared = format!("{p}-shared");
    env.ok(&["network", "create", &shared]);
    let nets = format!("networks:\n  shared:\n    external: true\n    name: {shared}\n");
    let dir_a = env.project_dir(
        "extlinks-a",
        &format!("services:\n  old:\n    image: busybox\n    container_name: {p}-legacy\n    networks: [shared]\n    command: [sleep, '3600']\n{nets}"),
    );
    let dir_b = env.project_dir(
        "extlinks-b",
        &format!("services:\n  app:\n    image: busybox\n    external_links: ['{p}-legacy:olddb']\n    networks: [default, shared]\n    command: [sleep, '3600']\n{nets}  default: {{}}\n"),
    );
    let other = format!("{p}b");
    env.compose_ok(&dir_a, &["up", "-d"]);
    let run_b = |args: &[&str]| -> (i32, String) {
        let out = env
            .berth()
            .current_dir(&dir_b)
            .arg("-p")
            .arg(&other)
            .args(args)
            .output()
            .expect("running berth");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run_b(&["up", "-d"]);
    assert_eq!(code, 0, "up of the linking project: {out}");
    let legacy_ip = eth0_ip(&env, &dir_a, "old");
    let (code, out) = run_b(&["exec", "app", "nslookup", "olddb"]);
    assert_eq!(code, 0, "nslookup olddb: {out}");
    assert!(out.contains(&format!("Address: {legacy_ip}")), "{out}");
    let (code, out) = run_b(&["down"]);
    assert_eq!(code, 0, "{out}");
    env.compose_ok(&dir_a, &["down"]);
    env.ok(&["network", "rm", &shared]);
    env.finish();
}

/// The project's bridge joins its link group with the host veths, so teardown removes
/// them all in one request (one RCU wait, not one per bridge on top); nothing is left.
#[test]
fn teardown_deletes_bridge_and_veths_as_one_link_group() {
    crate::require_root!();
    let env = TestEnv::new("net-group");
    let _ns = support::enter_fresh_netns();
    let _pins = PinSweeper(vec![env.root.join("netns")]);
    let rt = runtime();
    rt.block_on(async {
        let mgr = NetworkManager::new(&env.root).expect("manager");
        let p = env.project.clone();
        let net = mgr
            .ensure_network(&spec(&p, &format!("{p}_default")))
            .await
            .expect("network");
        let (_a, _) = container(&mgr, "ga", &[(&net, None)]).await;
        let (_b, _) = container(&mgr, "gb", &[(&net, None)]).await;
        let group = berth::network::link::link_group(&p);
        // `ip` prints groups as a signed 32-bit number: 3055557120 shows as -1239410176.
        let shown = |g: &str| g.parse::<i64>().ok().map(|v| v as u32);
        let out = output({
            let mut c = Command::new("ip");
            c.args(["-o", "link", "show"]);
            c
        })
        .expect("ip link show");
        let names: Vec<&str> = out
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.windows(2)
                    .any(|p| p[0] == "group" && shown(p[1]) == Some(group))
            })
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or(""))
            .collect();
        assert!(
            names.contains(&net.bridge.as_str()),
            "bridge {} not in group {group}: {out}",
            net.bridge
        );
        assert_eq!(names.len(), 3, "bridge and two veths: {out}");
        mgr.teardown_project(&p).await.expect("teardown");
        let left = leftovers(&mgr, &env.root).await;
        assert!(left.is_empty(), "left after teardown: {left:?}");
    });
    drop(rt);
    drop(_pins);
    drop(_ns);
    env.finish();
}
