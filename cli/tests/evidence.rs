//! Evidence end to end: three coordinators with the same `--evidence-key` (made by ssh-keygen), a
//! worker and the demo's real dump; a passed, a failed and a passed verdict are chained. The
//! export checks with OpenSSH's own `ssh-keygen -Y verify` and with `rehearse evidence verify`;
//! an edited record and a removed one make `evidence verify` fail naming the record.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::fleet::Fleet;

fn keygen(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("evidence_key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "rehearse-test", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen is installed (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    key
}

/// `ssh-keygen -Y verify` of `file` with its `.sig`, against the export's allowed_signers.
fn ssh_verify(dir: &Path, file: &str, signers: &Path) -> std::process::Output {
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(signers)
        .args(["-I", "rehearse", "-n", "rehearse-evidence", "-s"])
        .arg(dir.join(format!("{file}.sig")))
        .stdin(std::fs::File::open(dir.join(file)).expect("open"))
        .stderr(Stdio::piped())
        .output()
        .expect("ssh-keygen")
}

/// `rehearse evidence export` of a period into `dir`; what it printed (`--output json`).
fn export(fleet: &Fleet, since: &str, until: &str, dir: &Path) -> Value {
    let out = fleet.rehearse(&[
        "evidence",
        "export",
        "--since",
        since,
        "--until",
        until,
        "--out",
        dir.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exports_sign_chain_and_name_the_first_broken_link() {
    let keys = tempfile::tempdir().expect("tmp");
    let key = keygen(keys.path());
    let key_flag = key.display().to_string();
    let fleet = Fleet::start_with(&[("w1", "eu", 2)], &["--evidence-key", &key_flag]).await;

    let failing = fleet
        .plan_with("[[checks]]\nname = \"impossible\"\nsql = \"SELECT 1\"\nexpect = \"= 2\"\n");
    let mut ids = Vec::new();
    for plan in [&fleet.plan, &failing, &fleet.plan] {
        let id = fleet.client().submit(plan).await.expect("submit");
        let job = fleet.wait_final(&id).await;
        ids.push((id, job.state));
    }
    let states: Vec<&str> = ids.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["passed", "failed", "passed"]);

    let out_dir = fleet.root.path().join("evidence");
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let said = export(&fleet, &today[..10], &today[..10], &out_dir);
    assert_eq!(said["records"], 3, "{said}");

    // OpenSSH alone checks both files against the exported allowed_signers.
    let signers = out_dir.join("allowed_signers");
    for file in ["evidence.json", "evidence.html"] {
        let v = ssh_verify(&out_dir, file, &signers);
        assert!(
            v.status.success(),
            "ssh-keygen -Y verify {file}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    // The signer is the coordinator's key.
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let signers_text = std::fs::read_to_string(&signers).expect("signers");
    let key_body = public.split_whitespace().nth(1).expect("key body");
    assert!(signers_text.contains(key_body), "{signers_text}");

    // The JSON holds the chain; the HTML says what it evidences and needs nothing outside.
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("evidence.json")).expect("json"))
            .expect("parse");
    let records = doc["records"].as_array().expect("records");
    let verdicts: Vec<&str> = records
        .iter()
        .map(|r| r["verdict"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(verdicts, ["passed", "failed", "passed"]);
    for (r, (id, _)) in records.iter().zip(&ids) {
        assert_eq!(r["job"], id.as_str());
    }
    assert_eq!(records[1]["prev"], records[0]["hash"]);
    assert!(
        records[1]["failure"]
            .as_str()
            .is_some_and(|f| f.starts_with("checks")),
        "{}",
        records[1]
    );
    let html = std::fs::read_to_string(out_dir.join("evidence.html")).expect("html");
    for needle in [
        "A.8.13",
        "A.5.30",
        "SOC 2",
        "A1.3",
        "Art. 11",
        "Art. 12",
        ids[1].0.as_str(),
        "(recovered)",
        key_body,
    ] {
        assert!(html.contains(needle), "the report lacks {needle:?}");
    }
    assert!(
        !html.contains("src=") && !html.contains("<link") && !html.contains("@import"),
        "the report loads nothing from outside"
    );

    let verify = |dir: &Path| {
        fleet.rehearse(&[
            "evidence",
            "verify",
            dir.to_str().expect("utf-8"),
            "--key",
            key.with_extension("pub").to_str().expect("utf-8"),
        ])
    };
    let ok = verify(&out_dir);
    assert!(
        ok.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("evidence intact: 3 records"));

    // A copy of the export with its JSON changed; what `evidence verify` says of it (exit 1).
    let tampered = |name: &str, doc: &Value| {
        let dir = fleet.root.path().join(name);
        copy_dir(&out_dir, &dir);
        std::fs::write(
            dir.join("evidence.json"),
            serde_json::to_vec_pretty(doc).expect("json"),
        )
        .expect("write");
        let bad = verify(&dir);
        assert_eq!(bad.status.code(), Some(1), "{bad:?}");
        (dir, String::from_utf8_lossy(&bad.stderr).into_owned())
    };
    let seq = records[1]["seq"].as_u64().expect("seq");

    // An edited record: the failure made to look like a pass.
    let mut doc_edit = doc.clone();
    doc_edit["records"][1]["verdict"] = "passed".into();
    let (edited, said) = tampered("edited", &doc_edit);
    assert!(
        said.contains(&format!("record {seq} (job {})", ids[1].0)) && said.contains("changed"),
        "{said}"
    );
    // OpenSSH sees it too.
    assert!(
        !ssh_verify(&edited, "evidence.json", &signers)
            .status
            .success()
    );

    // A removed record (its link kept, or removed with it).
    let mut doc_cut = doc.clone();
    doc_cut["records"]
        .as_array_mut()
        .expect("records")
        .remove(1);
    let (_, said) = tampered("removed", &doc_cut);
    assert!(
        said.contains(&format!("record {seq}")) && said.contains("removed"),
        "{said}"
    );
    doc_cut["links"].as_array_mut().expect("links").remove(1);
    let (_, said) = tampered("removed-with-link", &doc_cut);
    assert!(said.contains(&format!("record {seq} is missing")), "{said}");

    // Not an export at all: could not check (exit 2), not "broken".
    let junk = fleet.root.path().join("junk");
    copy_dir(&out_dir, &junk);
    std::fs::write(junk.join("evidence.json"), "not json").expect("write");
    assert_eq!(verify(&junk).status.code(), Some(2));

    // Another key than the coordinator's is refused, even with the export intact.
    let other_dir = keys.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let other = keygen(&other_dir);
    let wrong = fleet.rehearse(&[
        "evidence",
        "verify",
        out_dir.to_str().expect("utf-8"),
        "--key",
        other.with_extension("pub").to_str().expect("utf-8"),
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not by the key given"));

    // A period with nothing in it is an empty export, not an error.
    let empty = fleet.root.path().join("empty");
    let said = export(&fleet, "2001-01-01", "2001-12-31", &empty);
    assert_eq!(said["records"], 0);
}
