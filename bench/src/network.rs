//! Section 4: the network path, measured on berth's own objects.
//!
//! - per-container attach time: `NetworkManager::attach` (veth pair, address, default
//!   route) into fresh pinned namespaces, as the engine does it on `up`;
//! - DNS from inside a real container of a `berth up -d` project to the supervisor's
//!   embedded server on the network gateway: sequential per-query latency (a small UDP
//!   client), and throughput with `dnsperf` (100 outstanding queries) when it is
//!   installed, else a Rust load client with several concurrent sockets;
//! - 100 MB through the project's published `127.0.0.1` port versus straight to the
//!   container address (a TCP sink that the bench runs inside the container's netns).
//!
//! The whole bench runs in a network namespace of its own (see `main`), so "the host"
//! here is that namespace; every packet goes to loopback or to a bridge berth created
//! there, and the supervisor runs with `BERTH_DNS_UPSTREAM=none`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use berth::network::netns::create_netns;
use berth::network::{NetworkManager, NetworkSpec};

use crate::{have, time_cmd, Opts, Report};

const S: &str = "4 network";
/// Bytes sent per throughput sample.
const BULK: u64 = 100_000_000;
/// Sequential DNS queries timed for the latency row.
const LATENCY_QUERIES: usize = 2000;

pub(crate) fn section(opts: &Opts, work: &Path, layout: Option<&Path>, r: &mut Report) {
    match attach_times(work, opts.runs.max(10) * 2) {
        Ok(mut v) => r.row(
            S,
            "attach a container netns (veth+addr+route)",
            &mut v,
            "ms",
            "<= 2 ms",
        ),
        Err(e) => r.note(S, format!("attach timing failed: {e:#}")),
    }
    let Some(layout) = layout else {
        r.note(S, "DNS and port rows skipped: no busybox fixture image");
        return;
    };
    if let Err(e) = project_rows(opts, work, layout, r) {
        r.note(S, format!("DNS / published-port rows failed: {e:#}"));
    }
}

/// Times `n` attachments of fresh pinned namespaces to one bridge network, through the
/// library the engine uses; tears everything down afterwards.
fn attach_times(work: &Path, n: usize) -> Result<Vec<f64>> {
    let root = work.join("attach-root");
    std::fs::create_dir_all(&root)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mgr = NetworkManager::new(&root)?;
        let project = "attachbench";
        let res = async {
            let net = mgr
                .ensure_network(&NetworkSpec {
                    project: project.into(),
                    name: format!("{project}_default"),
                    ..Default::default()
                })
                .await?;
            let mut ms = Vec::with_capacity(n);
            for k in 0..n {
                let id = format!("{project}-c{k}");
                let pin = mgr.netns_path(&id);
                create_netns(&pin).await?;
                let t = Instant::now();
                mgr.attach(&net, &pin, &id, 0, None, None).await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(ms)
        }
        .await;
        let down = mgr.teardown_project(project).await;
        let ms = res?;
        if let Err(errs) = down {
            bail!("teardown: {errs:?}");
        }
        Ok(ms)
    })
}

/// One `berth up -d` project (`web` publishing 127.0.0.1:PORT→7000, `client`), the DNS
/// and throughput rows measured against it, then `down`.
fn project_rows(opts: &Opts, work: &Path, layout: &Path, r: &mut Report) -> Result<()> {
    let root = work.join("net-root");
    let dir = work.join("netbench");
    std::fs::create_dir_all(&dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let svc = "    image: busybox\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n";
    std::fs::write(
        dir.join("compose.yaml"),
        format!("services:\n  web:\n{svc}    ports:\n      - \"127.0.0.1:{port}:7000\"\n  client:\n{svc}"),
    )?;
    let berth = |args: &[&str]| opts.berth_cmd(&root, &dir, args);
    time_cmd(&mut berth(&[
        "image",
        "load",
        "-i",
        &layout.to_string_lossy(),
    ]))?;
    time_cmd(&mut berth(&["up", "-d"]))?;
    let res = (|| -> Result<()> {
        let web = pin_of(&root, "netbench-web")?;
        let client = pin_of(&root, "netbench-client")?;
        let web_ip = eth0_addr(&web)?;
        let gateway = default_gateway(&client)?;
        dns_rows(
            opts,
            work,
            &client,
            SocketAddr::from((gateway, 53)),
            web_ip,
            r,
        )?;
        throughput_rows(opts, &web, web_ip, port, r)
    })();
    let down = time_cmd(&mut berth(&["down"]));
    res?;
    down.map(|_| ())
}

/// The netns pin of the project's container whose id starts with `prefix`.
fn pin_of(root: &Path, prefix: &str) -> Result<PathBuf> {
    std::fs::read_dir(root.join("netns"))
        .context("reading the netns pins")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .ok_or_else(|| anyhow!("no netns pin for {prefix} under {}", root.display()))
}

/// `ip <args>` inside the namespace pinned at `pin`.
fn ip_in(pin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", pin.display()))
        .arg("ip")
        .args(args)
        .output()
        .context("running nsenter ip")?;
    if !out.status.success() {
        bail!(
            "ip {args:?} in {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn eth0_addr(pin: &Path) -> Result<Ipv4Addr> {
    let text = ip_in(pin, &["-4", "-o", "addr", "show", "dev", "eth0"])?;
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .ok_or_else(|| anyhow!("no IPv4 address on eth0: {text}"))?;
    Ok(word.split('/').next().unwrap_or_default().parse()?)
}

fn default_gateway(pin: &Path) -> Result<Ipv4Addr> {
    let text = ip_in(pin, &["-4", "route", "show", "default"])?;
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .ok_or_else(|| anyhow!("no default route: {text}"))?;
    Ok(word.parse()?)
}

/// Runs `f` on a new thread that has joined the network namespace pinned at `pin`
/// (threads it starts inherit the namespace); the bench's own threads never move.
fn in_netns<T: Send + 'static>(
    pin: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let pin = pin.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&pin).with_context(|| format!("opening {}", pin.display()))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("measuring thread panicked"))?
}

/// A DNS query for `web` (type A, class IN, recursion desired) with the given id.
fn query(id: u16) -> [u8; 21] {
    let [a, b] = id.to_be_bytes();
    [
        a, b, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0, 0, 1, 0, 1,
    ]
}

/// Whether `resp` answers query `id` with NOERROR and an A record holding `want`.
fn answers(resp: &[u8], id: u16, want: Ipv4Addr) -> bool {
    resp.len() >= 12
        && resp[..2] == id.to_be_bytes()
        && resp[3] & 0x0f == 0
        && u16::from_be_bytes([resp[6], resp[7]]) > 0
        && resp.windows(4).any(|w| w == want.octets())
}

fn dns_rows(
    opts: &Opts,
    work: &Path,
    client: &Path,
    server: SocketAddr,
    web_ip: Ipv4Addr,
    r: &mut Report,
) -> Result<()> {
    // Sequential latency from one socket in the client container.
    let (mut lat, bad) = join(in_netns(client, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 512];
        let (mut lat, mut bad) = (Vec::with_capacity(LATENCY_QUERIES), 0usize);
        for i in 0..(LATENCY_QUERIES + 200) {
            let id = i as u16;
            let t = Instant::now();
            s.send(&query(id))?;
            match s.recv(&mut buf) {
                Ok(n) if answers(&buf[..n], id, web_ip) => {
                    // The first 200 warm the path up (ARP, caches) and are not counted.
                    if i >= 200 {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                _ => bad += 1,
            }
        }
        Ok((lat, bad))
    }))?;
    if lat.is_empty() {
        bail!("no correct DNS answer for `web` from {server}");
    }
    r.row(
        S,
        "DNS query latency, sequential, from a container",
        &mut lat,
        "us",
        "",
    );
    if bad > 0 {
        r.note(S, format!("{bad} sequential queries lost or wrong"));
    }

    // Throughput over several rounds.
    let rounds = opts.runs.clamp(3, 5);
    let mut qps = Vec::new();
    if have("dnsperf") {
        let data = work.join("dnsperf-queries");
        std::fs::write(&data, "web A\nclient A\nweb.netbench A\n")?;
        let mut lost = 0u64;
        for _ in 0..rounds {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", client.display()))
                .args(["dnsperf", "-s", &server.ip().to_string(), "-p", "53", "-d"])
                .arg(&data)
                .args(["-l", "2", "-q", "100", "-t", "1"])
                .output()
                .context("running dnsperf")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |key: &str| -> Option<f64> {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            };
            let q = field("Queries per second:")
                .ok_or_else(|| anyhow!("dnsperf printed no rate: {text}"))?;
            lost += field("Queries lost:").unwrap_or(0.0) as u64;
            qps.push(q);
        }
        r.row(
            S,
            "DNS qps, dnsperf -q 100, from a container",
            &mut qps,
            "q/s",
            ">= 50k",
        );
        r.note(
            S,
            format!("dnsperf: {rounds} runs of 2 s, {lost} queries lost in all"),
        );
    } else {
        let clients = 8;
        for _ in 0..rounds {
            let (n, secs) = join(in_netns(client, move || load(server, web_ip, clients)))?;
            qps.push(n as f64 / secs);
        }
        r.row(
            S,
            &format!("DNS qps, {clients} concurrent sockets, from a container"),
            &mut qps,
            "q/s",
            ">= 50k",
        );
        r.note(
            S,
            "dnsperf not installed: the Rust load client measured qps",
        );
    }
    Ok(())
}

/// `clients` sockets each running sequential queries for two seconds; counts correct
/// answers. Runs on a thread already inside the container's netns.
fn load(server: SocketAddr, want: Ipv4Addr, clients: usize) -> Result<(usize, f64)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(2);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || -> Result<usize> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(server)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut buf = [0u8; 512];
                let mut ok = 0;
                let mut id = (c as u16) << 12;
                while Instant::now() < deadline {
                    id = id.wrapping_add(1);
                    s.send(&query(id))?;
                    if matches!(s.recv(&mut buf), Ok(n) if answers(&buf[..n], id, want)) {
                        ok += 1;
                    }
                }
                Ok(ok)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += join(h)?;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

fn throughput_rows(
    opts: &Opts,
    web: &Path,
    web_ip: Ipv4Addr,
    port: u16,
    r: &mut Report,
) -> Result<()> {
    // A 100 MB sample takes about 0.1 s: enough of them that the medians hold on a busy box.
    let rounds = opts.runs.clamp(5, 20);
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = in_netns(web, move || {
        let l = TcpListener::bind(("0.0.0.0", 7000))?;
        l.set_nonblocking(true)?;
        tx.send(()).ok();
        let mut buf = vec![0u8; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut served = 0;
        while served < rounds * 2 {
            let (mut s, _) = match l.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("sink: no connection for 120 s");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            s.set_nonblocking(false)?;
            let mut n = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => break,
                    k => n += k as u64,
                }
            }
            s.write_all(&n.to_be_bytes())?;
            served += 1;
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the TCP sink in the web container did not start"))?;
    let direct = SocketAddr::from((web_ip, 7000));
    let published = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which path goes first.
        if i % 2 == 0 {
            d.push(push(direct)?);
            p.push(push(published)?);
        } else {
            p.push(push(published)?);
            d.push(push(direct)?);
        }
    }
    join(sink)?;
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ratio = med(&p) / med(&d) * 100.0;
    r.row(S, "100 MB to the container IP", &mut d, "MB/s", "");
    r.row(
        S,
        "100 MB through published 127.0.0.1 port",
        &mut p,
        "MB/s",
        ">= 95 % of direct",
    );
    r.note(S, format!("published / direct (medians) = {ratio:.0} %"));
    Ok(())
}

/// Sends 100 MB to `addr`, checks the sink's byte count, returns MB/s.
fn push(addr: SocketAddr) -> Result<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    let chunk = vec![7u8; 1 << 16];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < BULK {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    let secs = t.elapsed().as_secs_f64();
    if u64::from_be_bytes(n) != sent {
        bail!(
            "sink behind {addr} got {} of {sent} bytes",
            u64::from_be_bytes(n)
        );
    }
    Ok(sent as f64 / 1e6 / secs)
}
