//! A real S3-compatible server for the tests (moto's), shared by the worker's tests and the CLI's
//! (included there by path).

use std::path::Path;

/// A real S3-compatible server for the tests: moto's server (from PyPI; scripts/setup installs
/// it) on a loopback port, with request signing enforced and one IAM user allowed s3:*.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
}

impl Moto {
    /// Starts the server with the given buckets, request signing enforced; fails loudly when
    /// moto is not installed.
    pub fn start(buckets: &[&str]) -> Moto {
        Moto::launch(buckets, true)
    }

    /// The same without signature checks: moto 5.2's check rejects every signed ListObjectsV2
    /// (boto3's too), so tests that list a prefix run against an open server.
    pub fn start_open(buckets: &[&str]) -> Moto {
        Moto::launch(buckets, false)
    }

    fn launch(buckets: &[&str], enforce: bool) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        if enforce {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 is required for the S3 tests");
        // Owned from here on: a failed start below still kills the server (Drop).
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            key_id: String::new(),
            secret: String::new(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Shared by the worker's and the CLI's tests: both crates sit at the workspace root.
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/tests/fixtures/s3_bootstrap.py");
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(&moto.endpoint)
            .args(buckets)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "S3 bootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        moto.key_id = words.next().expect("key id").to_owned();
        moto.secret = words.next().expect("secret").to_owned();
        moto
    }

    /// The settings a verifier reaches this server with.
    pub fn settings(&self) -> rehearse_worker::artifact::S3Settings {
        self.settings_with(&self.key_id, &self.secret)
    }

    pub fn settings_with(
        &self,
        key_id: &str,
        secret: &str,
    ) -> rehearse_worker::artifact::S3Settings {
        rehearse_worker::artifact::S3Settings(
            [
                ("aws_endpoint", self.endpoint.as_str()),
                ("aws_access_key_id", key_id),
                ("aws_secret_access_key", secret),
                ("aws_region", "us-east-1"),
                ("aws_allow_http", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
    }

    /// Uploads `bytes` as `s3://bucket/key`.
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        self.put_in_class(bucket, key, bytes, None).await;
    }

    /// Uploads `bytes` in a storage class (`GLACIER`, `DEEP_ARCHIVE`, …).
    pub async fn put_in_class(&self, bucket: &str, key: &str, bytes: Vec<u8>, class: Option<&str>) {
        use object_store::ObjectStore;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&self.endpoint)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .expect("store");
        let mut attributes = object_store::Attributes::new();
        if let Some(class) = class {
            attributes.insert(
                object_store::Attribute::StorageClass,
                class.to_owned().into(),
            );
        }
        store
            .put_opts(
                &object_store::path::Path::from(key),
                bytes.into(),
                object_store::PutOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await
            .expect("upload");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
