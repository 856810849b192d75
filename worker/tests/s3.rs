//! Artifacts in S3-compatible storage, against a real S3 server (moto's, with request signing
//! enforced): real pg_dump output downloaded, hashed on the way and restored; sidecars, backup
//! sets over prefixes, copies in other buckets, and wrong credentials. Every test ends with no
//! sandbox or spill dir and no process left.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use rehearse_core::report::Phase;

fn s3_plan(url: &str, extra: &str) -> rehearse_core::plan::Plan {
    rehearse_core::plan::Plan::from_toml(&format!(
        "[artifact]\nurl = \"{url}\"\nengine = \"postgres\"\n{extra}"
    ))
    .expect("plan")
}

#[tokio::test]
async fn pg_dumps_verify_from_s3_compressed_and_not() {
    let fx = fixtures().await;
    let s3 = Moto::start(&["backups"]);
    let env = TestEnv::with_s3(s3.settings());
    for (file, format) in [
        ("custom.dump", "pg_dump custom"),
        ("plain.sql.gz", "plain SQL (gzip)"),
        ("plain.sql.zst", "plain SQL (zstd)"),
    ] {
        let bytes = fs::read(fx.join(file)).expect("fixture");
        let digest = blake3::hash(&bytes).to_hex().to_string();
        s3.put("backups", &format!("daily/{file}"), bytes.clone())
            .await;
        let url = format!("s3://backups/daily/{file}");
        let report = env.verify(&s3_plan(&url, &shop_checks())).await;
        assert_passed(&report);
        assert_eq!(report.artifact.url, url);
        assert_eq!(report.artifact.format.as_deref(), Some(format));
        assert_eq!(report.artifact.blake3.as_deref(), Some(digest.as_str()));
        assert_eq!(report.artifact.bytes, bytes.len() as u64);
        assert_shop_counted(&report, "public");
    }
}

#[tokio::test]
async fn a_sidecar_in_s3_is_checked() {
    let fx = fixtures().await;
    let s3 = Moto::start(&["backups"]);
    let env = TestEnv::with_s3(s3.settings());
    let bytes = fs::read(fx.join("custom.dump")).expect("fixture");
    let digest = blake3::hash(&bytes).to_hex().to_string();
    s3.put("backups", "good.dump", bytes.clone()).await;
    s3.put(
        "backups",
        "good.dump.blake3",
        format!("{digest}  good.dump\n").into_bytes(),
    )
    .await;
    let report = env.verify(&s3_plan("s3://backups/good.dump", "")).await;
    assert_passed(&report);
    assert_eq!(report.artifact.blake3_from.as_deref(), Some("sidecar"));

    s3.put("backups", "bad.dump", bytes).await;
    s3.put(
        "backups",
        "bad.dump.blake3",
        format!("{}  bad.dump\n", "0".repeat(64)).into_bytes(),
    )
    .await;
    let report = env.verify(&s3_plan("s3://backups/bad.dump", "")).await;
    assert_failed_in(&report, Phase::Checksum.as_str(), "blake3 mismatch");
}

#[tokio::test]
async fn latest_and_random_picks_over_a_prefix() {
    let fx = fixtures().await;
    let s3 = Moto::start_open(&["backups"]);
    let env = TestEnv::with_s3(s3.settings());
    let good = fs::read(fx.join("custom.dump")).expect("fixture");
    // The oldest is garbage: latest must not pick it.
    s3.put("backups", "daily/2026-11-20.dump", b"garbage".to_vec())
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s3.put("backups", "daily/2026-11-21.dump", good.clone())
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s3.put("backups", "daily/2026-11-22.dump", good.clone())
        .await;
    s3.put(
        "backups",
        "daily/2026-11-22.dump.blake3",
        format!("{}  x\n", blake3::hash(&good).to_hex()).into_bytes(),
    )
    .await;
    s3.put("backups", "weekly/old.dump", b"elsewhere".to_vec())
        .await;

    let report = env
        .verify(&s3_plan("s3://backups/daily/", "pick = \"latest\"\n"))
        .await;
    assert_passed(&report);
    assert_eq!(report.artifact.url, "s3://backups/daily/2026-11-22.dump");
    assert_eq!(
        report.artifact.candidates,
        Some(3),
        "sidecars are not backups"
    );
    assert_eq!(report.artifact.blake3_from.as_deref(), Some("sidecar"));

    // Seeded, so the spread below is the same on every run: it cannot fail by chance.
    let mut seen = std::collections::BTreeSet::new();
    for seed in 1..=8 {
        let report = env
            .verify(&s3_plan(
                "s3://backups/daily",
                &format!("pick = \"random\"\nwithin = \"30d\"\nseed = {seed}\n"),
            ))
            .await;
        assert!(report.artifact.url.starts_with("s3://backups/daily/"));
        seen.insert(report.artifact.url.clone());
        if report.artifact.url.ends_with("2026-11-20.dump") {
            assert_failed_in(&report, Phase::Restore.as_str(), "garbage");
        } else {
            assert_passed(&report);
        }
    }
    assert!(seen.len() >= 2, "random picked only {seen:?}");
    // The same seed, the same pick.
    let again = |seed: u64| {
        s3_plan(
            "s3://backups/daily",
            &format!("pick = \"random\"\nwithin = \"30d\"\nseed = {seed}\n"),
        )
    };
    let first = env.verify(&again(3)).await.artifact.url;
    assert_eq!(env.verify(&again(3)).await.artifact.url, first);

    let report = env
        .verify(&s3_plan("s3://backups/monthly/", "pick = \"latest\"\n"))
        .await;
    assert_failed_in(&report, Phase::Fetch.as_str(), "no backup");
}

#[tokio::test]
async fn copies_in_other_buckets_are_compared() {
    let fx = fixtures().await;
    let s3 = Moto::start(&["backups", "dr-site"]);
    let env = TestEnv::with_s3(s3.settings());
    let good = fs::read(fx.join("custom.dump")).expect("fixture");
    s3.put("backups", "x.dump", good.clone()).await;
    s3.put("dr-site", "x.dump", good.clone()).await;
    let local = env.file("x.dump", &good);
    let mut other = good.clone();
    let at = other.len() / 2;
    other[at] ^= 0xff;
    s3.put("dr-site", "y.dump", other).await;

    let both = format!(
        "copies = [\"s3://dr-site/x.dump\", \"file://{}\"]\n",
        local.display()
    );
    let report = env.verify(&s3_plan("s3://backups/x.dump", &both)).await;
    assert_passed(&report);
    assert!(report.artifact.copies.iter().all(|c| c.ok));

    let bad =
        "copies = [\"s3://dr-site/x.dump\", \"s3://dr-site/y.dump\", \"s3://dr-site/gone.dump\"]\n";
    let report = env.verify(&s3_plan("s3://backups/x.dump", bad)).await;
    assert_failed_in(&report, Phase::Checksum.as_str(), "s3://dr-site/y.dump");
    let copies = &report.artifact.copies;
    assert_eq!(copies.len(), 3);
    assert!(copies[0].ok);
    assert!(
        !copies[1].ok
            && copies[1]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("differs"))
    );
    assert_eq!(copies[2].reason.as_deref(), Some("missing"));
    // The artifact matched: it was still restored and checked.
    assert!(report.phases.iter().any(|p| p.name == Phase::Checks));
}

#[tokio::test]
async fn wrong_credentials_and_missing_objects_fail_in_fetch_with_a_reason() {
    let fx = fixtures().await;
    let s3 = Moto::start(&["backups"]);
    s3.put(
        "backups",
        "x.dump",
        fs::read(fx.join("custom.dump")).expect("fixture"),
    )
    .await;
    let secret = "wrong-secret-never-shown";
    let env = TestEnv::with_s3(s3.settings_with("AKIAWRONGWRONGWRONG", secret));
    let report = env.verify(&s3_plan("s3://backups/x.dump", "")).await;
    // The storage refusing this worker's credentials says nothing of the backup.
    assert_error_in(&report, Phase::Fetch.as_str(), "refused the credentials");
    let json = serde_json::to_string(&report).expect("json");
    assert!(
        !json.contains(secret),
        "a credential leaked into the report"
    );

    let env = TestEnv::with_s3(s3.settings_with(&s3.key_id, "not-the-secret"));
    let report = env.verify(&s3_plan("s3://backups/x.dump", "")).await;
    // The storage refusing this worker's credentials says nothing of the backup.
    assert_error_in(&report, Phase::Fetch.as_str(), "refused the credentials");

    let env = TestEnv::with_s3(s3.settings());
    let report = env.verify(&s3_plan("s3://backups/nope.dump", "")).await;
    assert_failed_in(
        &report,
        Phase::Fetch.as_str(),
        "not found: s3://backups/nope.dump",
    );
    let report = env.verify(&s3_plan("s3://no-such-bucket/x.dump", "")).await;
    assert_failed_in(&report, Phase::Fetch.as_str(), "s3://no-such-bucket/x.dump");
}

#[tokio::test]
async fn a_plan_picks_a_named_source_profile() {
    let fx = fixtures().await;
    let s3 = Moto::start(&["backups"]);
    s3.put(
        "backups",
        "x.dump",
        fs::read(fx.join("custom.dump")).expect("fixture"),
    )
    .await;
    // The default settings are wrong; the "dr" profile is right.
    let env = TestEnv::with_profiles(
        s3.settings_with("AKIAWRONGWRONGWRONG", "wrong"),
        [("dr".to_owned(), s3.settings())].into_iter().collect(),
    );
    let report = env.verify(&s3_plan("s3://backups/x.dump", "")).await;
    // The storage refusing this worker's credentials says nothing of the backup.
    assert_error_in(&report, Phase::Fetch.as_str(), "refused the credentials");
    let report = env
        .verify(&s3_plan("s3://backups/x.dump", "profile = \"dr\"\n"))
        .await;
    assert_passed(&report);
    let report = env
        .verify(&s3_plan("s3://backups/x.dump", "profile = \"tape\"\n"))
        .await;
    assert_error_in(
        &report,
        Phase::Fetch.as_str(),
        "no s3 source profile \"tape\"",
    );
}

/// A backup a lifecycle policy moved to GLACIER: never `failed`. A worker that may not request
/// restores says so (`error`, with a time to try again); one that may requests it, and the next
/// try (moto restores at once) passes. The request is signed with the profile's credentials
/// (moto checks signatures here).
#[tokio::test]
async fn an_archived_backup_gets_a_restore_request_and_is_never_failed() {
    let fx = fixtures().await;
    let s3 = Moto::start(&["backups"]);
    let bytes = fs::read(fx.join("custom.dump")).expect("fixture");
    s3.put_in_class("backups", "monthly/2026-10.dump", bytes, Some("GLACIER"))
        .await;
    let plan = s3_plan("s3://backups/monthly/2026-10.dump", &shop_checks());
    let with = |extra: &[(&str, &str)]| {
        let mut settings = s3.settings();
        for (k, v) in extra {
            settings.0.insert((*k).to_owned(), (*v).to_owned());
        }
        TestEnv::with_s3(settings)
    };

    let env = with(&[("restore_request", "false"), ("restore_poll", "2s")]);
    let report = env.verify(&plan).await;
    assert_eq!(
        report.verdict,
        rehearse_core::report::Verdict::Error,
        "{report:?}"
    );
    let failure = report.failure.clone().expect("failure");
    assert_eq!(failure.phase, "fetch");
    assert!(failure.could_not_verify);
    assert_eq!(failure.retry_after_ms, Some(2000));
    assert!(
        failure.reason.contains("GLACIER storage class")
            && failure.reason.contains("restore_request = false")
            && failure.reason.contains("try again in 2s"),
        "{}",
        failure.reason
    );
    // Nobody asked for the restore: still archived.
    let again = env.verify(&plan).await;
    assert_eq!(again.retry_after_ms(), Some(2000), "{again:?}");

    let env = with(&[("restore_poll", "1s"), ("restore_tier", "bulk")]);
    restored_on_the_second_try(&env, &plan, "restore requested (Bulk tier, kept 1 day)").await;

    // A pg_dump directory under a prefix: one try asks for every archived object of it (an open
    // server: moto's signature check refuses every signed listing).
    env.assert_clean();
    let s3 = Moto::start_open(&["backups"]);
    let mut settings = s3.settings();
    settings.0.insert("restore_poll".into(), "1s".into());
    let env = TestEnv::with_s3(settings);
    let dir = fx.join("dir.dump");
    let mut files = 0;
    for entry in fs::read_dir(&dir).expect("dir dump") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = fs::read(entry.path()).expect("file");
        s3.put_in_class(
            "backups",
            &format!("monthly/dir/{name}"),
            bytes,
            Some("GLACIER"),
        )
        .await;
        files += 1;
    }
    assert!(files > 2, "{files}");
    let plan = s3_plan("s3://backups/monthly/dir/", &shop_checks());
    restored_on_the_second_try(
        &env,
        &plan,
        &format!("restore requested for {files} objects"),
    )
    .await;
    env.assert_clean();
}

/// The first try says a restore was requested (`said`) and when to try again (1 s); the second
/// passes (moto restores at once).
async fn restored_on_the_second_try(env: &TestEnv, plan: &rehearse_core::plan::Plan, said: &str) {
    let first = env.verify(plan).await;
    let reason = first
        .failure
        .as_ref()
        .map(|f| f.reason.clone())
        .unwrap_or_default();
    assert_eq!(first.retry_after_ms(), Some(1000), "{first:?}");
    assert!(reason.contains(said), "{reason}");
    let second = env.verify(plan).await;
    assert_passed(&second);
    assert_shop_counted(&second, "public");
}
