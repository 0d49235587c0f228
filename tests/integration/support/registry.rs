//! A real registry for tests: Debian's `docker-registry` (CNCF distribution) on
//! 127.0.0.1 with a random free port and a temp storage dir, stopped by PID on drop.
//!
//! [`Registry::push_layout`] uploads an OCI image layout with plain registry API calls
//! (monolithic blob upload, manifest PUT): the fixture path used until and besides
//! `berth image push`, and an independent check of it.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

/// A running registry server.
pub struct Registry {
    /// `127.0.0.1:<port>`
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// What a GET returned.
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub digest: Option<String>,
    pub body: Vec<u8>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

impl Registry {
    /// Start `docker-registry serve` on a free loopback port and wait until `/v2/` answers.
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("bt-registry-")
            .tempdir()
            .expect("creating registry dir");
        let port = super::free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).expect("writing registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (apt install docker-registry)");
        let reg = Registry {
            addr,
            child,
            _dir: dir,
        };
        let url = format!("http://{}/v2/", reg.addr);
        eventually(Duration::from_secs(15), || match agent().get(&url).call() {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(format!("/v2/ answered {}", r.status())),
            Err(e) => Err(format!("/v2/ not reachable: {e}")),
        });
        reg
    }

    /// GET `http://<addr><path>` with an Accept header.
    pub fn get(&self, path: &str, accept: &str) -> Response {
        let mut resp = agent()
            .get(format!("http://{}{}", self.addr, path))
            .header("Accept", accept)
            .call()
            .expect("registry GET");
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let digest = header("docker-content-digest");
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.body_mut()
            .as_reader()
            .read_to_end(&mut body)
            .expect("reading body");
        Response {
            status,
            content_type,
            digest,
            body,
        }
    }

    /// Push every blob and the first manifest of an OCI layout as `<repo>:<tag>`.
    pub fn push_layout(&self, layout: &Path, repo: &str, tag: &str) {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
                .expect("index.json is JSON");
        let desc = &index["manifests"][0];
        let mdigest = desc["digest"].as_str().expect("manifest digest");
        let blob = |d: &str| {
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .expect("reading blob")
        };
        let manifest_bytes = blob(mdigest);
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest_bytes).expect("manifest is JSON");
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
        for l in manifest["layers"].as_array().unwrap() {
            digests.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in digests {
            self.upload_blob(repo, &blob(&d));
        }
        let media = manifest["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        self.put_manifest(repo, tag, &media, &manifest_bytes);
    }

    /// Upload one blob (monolithic POST + PUT ?digest=); returns its `sha256:` digest.
    pub fn upload_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = berth_fixtures::sha256_digest(data);
        let a = agent();
        let start = a
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.addr))
            .send_empty()
            .expect("starting upload");
        assert_eq!(start.status(), 202, "blob upload start for {d}");
        let loc = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload location")
            .to_string();
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{}", self.addr, loc)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = a
            .put(format!("{url}{sep}digest={d}"))
            .header("Content-Type", "application/octet-stream")
            .send(data)
            .expect("uploading blob");
        assert_eq!(put.status(), 201, "blob upload of {d}");
        d
    }

    /// PUT a manifest as `<repo>:<reference>`.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let put = agent()
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .header("Content-Type", media_type)
            .send(body)
            .expect("putting manifest");
        assert_eq!(put.status(), 201, "manifest put for {repo}:{reference}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, ended by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
