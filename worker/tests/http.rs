//! Artifacts over plain HTTP(S) GETs, against a real HTTP server on loopback (Python's
//! `http.server`, with a bearer token required under `/private/`): real pg_dump output downloaded,
//! hashed on the way and restored; sidecars, tokens from a source profile, a refused token, a
//! missing object, a truncated transfer, and a backup set the server cannot list. Every test ends
//! with no sandbox or spill dir and no process left.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use rehearse_core::report::Phase;
use rehearse_worker::artifact::{HttpSettings, Sources};

/// The token the server wants under `/private/`.
const TOKEN: &str = "Bearer t0ken-for-tests";

/// Serves `root` on 127.0.0.1 (an ephemeral port): `/private/*` needs `Authorization: TOKEN`;
/// `/short/NAME` announces NAME's full length but sends half of it and closes.
const SERVER: &str = r#"
import http.server, os, socketserver, sys
root, token = sys.argv[1], sys.argv[2]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/private/") and self.headers.get("Authorization") != token:
            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
        if self.path.startswith("/short/"):
            data = open(os.path.join(root, self.path[len("/short/"):]), "rb").read()
            self.send_response(200); self.send_header("Content-Length", str(len(data)))
            self.send_header("Last-Modified", self.date_time_string()); self.end_headers()
            self.wfile.write(data[: len(data) // 2]); self.wfile.flush()
            self.close_connection = True; return
        if self.path.startswith("/private/"):
            self.path = self.path[len("/private"):]
        return super().do_GET()
http.server.ThreadingHTTPServer.allow_reuse_address = True
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct HttpServer {
    child: Child,
    base: String,
}

impl HttpServer {
    fn start(root: &Path) -> HttpServer {
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(root)
            .arg(TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (the test HTTP server) must be installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        let port: u16 = line.trim().parse().expect("the server prints its port");
        HttpServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plan(url: &str, extra: &str) -> rehearse_core::plan::Plan {
    rehearse_core::plan::Plan::from_toml(&format!(
        "[artifact]\nurl = \"{url}\"\nengine = \"postgres\"\n{extra}"
    ))
    .expect("plan")
}

fn env_with_token(token: &str) -> TestEnv {
    let sources = Sources {
        http_profiles: [(
            "vault".to_owned(),
            HttpSettings {
                headers: [("Authorization".to_owned(), token.to_owned())].into(),
            },
        )]
        .into(),
        ..Sources::default()
    };
    TestEnv::with_sources(sources)
}

/// A served dir with the custom-format shop dump, its sidecar, and a damaged copy.
async fn served() -> (tempfile::TempDir, Vec<u8>) {
    let fx = fixtures().await;
    let dir = tempfile::tempdir().expect("served dir");
    let bytes = fs::read(fx.join("custom.dump")).expect("fixture");
    fs::write(dir.path().join("shop.dump"), &bytes).expect("write");
    fs::write(
        dir.path().join("shop.dump.blake3"),
        format!("{}  shop.dump\n", blake3::hash(&bytes).to_hex()),
    )
    .expect("write");
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(dir.path().join("flipped.dump"), &bad).expect("write");
    fs::write(
        dir.path().join("flipped.dump.blake3"),
        format!("{}  flipped.dump\n", blake3::hash(&bytes).to_hex()),
    )
    .expect("write");
    (dir, bytes)
}

#[tokio::test]
async fn a_dump_over_http_verifies_with_its_sidecar() {
    let (dir, bytes) = served().await;
    let server = HttpServer::start(dir.path());
    let env = env_with_token(TOKEN);
    let url = format!("{}/shop.dump", server.base);
    let report = env.verify(&plan(&url, &shop_checks())).await;
    assert_passed(&report);
    assert_eq!(report.artifact.url, url);
    assert_eq!(report.artifact.bytes, bytes.len() as u64);
    let digest = blake3::hash(&bytes).to_hex().to_string();
    assert_eq!(report.artifact.blake3.as_deref(), Some(digest.as_str()));
    assert_eq!(report.artifact.blake3_from.as_deref(), Some("sidecar"));
    assert_shop_counted(&report, "public");

    // The same bytes with one flipped: the sidecar catches it before any sandbox.
    let report = env
        .verify(&plan(&format!("{}/flipped.dump", server.base), ""))
        .await;
    assert_failed_in(&report, Phase::Checksum.as_str(), "blake3 mismatch");
}

#[tokio::test]
async fn a_token_comes_from_the_profile_and_a_refusal_is_not_the_backups_fault() {
    let (dir, _) = served().await;
    let server = HttpServer::start(dir.path());
    let url = format!("{}/private/shop.dump", server.base);

    let env = env_with_token(TOKEN);
    let report = env.verify(&plan(&url, "profile = \"vault\"\n")).await;
    assert_passed(&report);
    // Nothing of the token reaches the report.
    let json = serde_json::to_string(&report).expect("json");
    assert!(!json.contains("t0ken"), "the token leaked into the report");

    // No profile, or the wrong token: the server refuses this worker, the backup is not judged.
    let report = env.verify(&plan(&url, "")).await;
    assert_error_in(&report, Phase::Fetch.as_str(), "refused the credentials");
    let wrong = env_with_token("Bearer wrong");
    let report = wrong.verify(&plan(&url, "profile = \"vault\"\n")).await;
    assert_error_in(&report, Phase::Fetch.as_str(), "refused the credentials");
    assert!(!report.failure.expect("reason").reason.contains("wrong"));
    // A profile this worker does not have.
    let report = env.verify(&plan(&url, "profile = \"tape\"\n")).await;
    assert_error_in(
        &report,
        Phase::Fetch.as_str(),
        "no http source profile \"tape\"",
    );
}

#[tokio::test]
async fn missing_truncated_and_unlistable_are_verdicts() {
    let (dir, _) = served().await;
    let server = HttpServer::start(dir.path());
    let env = env_with_token(TOKEN);

    let report = env
        .verify(&plan(&format!("{}/gone.dump", server.base), ""))
        .await;
    assert_failed_in(&report, Phase::Fetch.as_str(), "not found");

    // The server promises the whole file and sends half: never restored as if whole.
    let report = env
        .verify(&plan(&format!("{}/short/shop.dump", server.base), ""))
        .await;
    assert_failed_in(&report, Phase::Fetch.as_str(), "shop.dump");

    // A backup set needs a listing; a plain HTTP server has none to give.
    let report = env
        .verify(&plan(&format!("{}/", server.base), "pick = \"latest\"\n"))
        .await;
    assert_failed_in(&report, Phase::Fetch.as_str(), "does not list");
}
