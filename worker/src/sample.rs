//! A sample database with real data, dumped with the real pg_dump: what `rehearse demo` verifies,
//! and the fixture the integration tests restore.
//!
//! The shop database has customers and orders owned by a role `shop_owner`, a grant to
//! `reporting`, an index, a view and foreign keys, so ownership, privileges and dependencies are
//! all exercised by a restore. The newest order is one hour old (RPO ≈ 1 h).

use std::path::Path;

use rehearse_core::plan::{Plan, RawArtifact, RawCheck, RawPlan, RawTargets};

use crate::engines::postgres::cluster::PgCluster;
use crate::engines::postgres::inspect::{connect, db_message};
use crate::pipeline::Verifier;

/// pg_dump's output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    Custom,
    Directory,
    Tar,
    Plain,
}

impl DumpFormat {
    pub const ALL: [DumpFormat; 4] = [
        DumpFormat::Custom,
        DumpFormat::Directory,
        DumpFormat::Tar,
        DumpFormat::Plain,
    ];

    fn flag(self) -> &'static str {
        match self {
            DumpFormat::Custom => "--format=custom",
            DumpFormat::Directory => "--format=directory",
            DumpFormat::Tar => "--format=tar",
            DumpFormat::Plain => "--format=plain",
        }
    }
}

/// The sample's database name.
pub const DATABASE: &str = "shop";

/// A running PostgreSQL server holding the sample database.
pub struct SampleDatabase<'a> {
    _verifier: &'a Verifier,
    cluster: Option<PgCluster>,
    pub orders: u32,
}

impl<'a> SampleDatabase<'a> {
    /// Starts a throwaway server (same sandbox as verifications) and fills the shop database.
    pub async fn create(verifier: &'a Verifier, orders: u32) -> Result<SampleDatabase<'a>, String> {
        let installed = verifier
            .installations()
            .first()
            .ok_or("no PostgreSQL server binaries found")?;
        let mut sample = SampleDatabase {
            _verifier: verifier,
            cluster: None,
            orders: orders.max(10),
        };
        let cluster = sample
            .cluster
            .insert(PgCluster::create(verifier.runtime(), installed).map_err(|e| e.to_string())?);
        cluster
            .start(verifier.runtime(), &verifier.options().cache_dir, None, &[])
            .await
            .map_err(|e| e.to_string())?;
        let admin = connect(&cluster.socket_dir(), "postgres").await?;
        // One statement per call: CREATE DATABASE refuses to run inside the implicit transaction
        // of a multi-statement query.
        for sql in [
            "CREATE ROLE shop_owner",
            "CREATE ROLE reporting",
            &format!("CREATE DATABASE {DATABASE} OWNER shop_owner"),
        ] {
            admin
                .batch_execute(sql)
                .await
                .map_err(|e| format!("create sample database: {}", db_message(&e)))?;
        }
        let shop = connect(&cluster.socket_dir(), DATABASE).await?;
        let orders = sample.orders;
        let customers = (orders / 10).max(1);
        shop.batch_execute(&format!(
            "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text UNIQUE NOT NULL, created_at timestamptz NOT NULL);
             CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                                  total numeric(12,2) NOT NULL CHECK (total >= 0), status text NOT NULL, created_at timestamptz NOT NULL);
             CREATE INDEX orders_created_at ON orders (created_at);
             CREATE VIEW daily_revenue AS SELECT date_trunc('day', created_at) AS day, sum(total) AS revenue FROM orders GROUP BY 1;
             INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com', now() - interval '400 days' + g * interval '1 minute'
               FROM generate_series(1, {customers}) g;
             INSERT INTO orders SELECT g, 1 + g % {customers}, round((random() * 500)::numeric, 2), (ARRAY['paid','shipped','refunded'])[1 + g % 3],
                                       now() - interval '1 hour' - ({orders} - g) * interval '37 seconds'
               FROM generate_series(1, {orders}) g;
             ALTER TABLE customers OWNER TO shop_owner;
             ALTER TABLE orders OWNER TO shop_owner;
             ALTER VIEW daily_revenue OWNER TO shop_owner;
             GRANT SELECT ON orders, daily_revenue TO reporting;
             ANALYZE;"
        ))
        .await
        .map_err(|e| format!("fill sample database: {}", db_message(&e)))?;
        Ok(sample)
    }

    /// Dumps the sample database with the real pg_dump to `out` (a file, or a directory for the
    /// directory format).
    pub async fn dump(&self, format: DumpFormat, out: &Path) -> Result<(), String> {
        let cluster = self.cluster.as_ref().ok_or("sample database is stopped")?;
        let mut tool = cluster.tool("pg_dump", false);
        tool.args.extend([
            format.flag().into(),
            "-d".into(),
            DATABASE.into(),
            "-f".into(),
        ]);
        tool.args.push(out.into());
        let output = cluster.sandbox().run(tool, None).await?;
        if output.success() {
            Ok(())
        } else {
            Err(output.failure("pg_dump"))
        }
    }

    /// Runs SQL in one of the sample server's databases (tests shape other fixtures with it).
    pub async fn execute(&self, database: &str, sql: &str) -> Result<(), String> {
        let cluster = self.cluster.as_ref().ok_or("sample database is stopped")?;
        let client = connect(&cluster.socket_dir(), database).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{database}: {}", db_message(&e)))
    }

    /// Creates a tablespace on a directory of the sample server's own (removed with it).
    pub async fn add_tablespace(&self, verifier: &Verifier, name: &str) -> Result<(), String> {
        let cluster = self.cluster.as_ref().ok_or("sample database is stopped")?;
        let dir = cluster.dir().join(format!("ts-{name}"));
        std::fs::create_dir(&dir).map_err(|e| format!("tablespace dir: {e}"))?;
        verifier.runtime().give(&dir).map_err(|e| e.to_string())?;
        self.execute(
            "postgres",
            &format!(
                "CREATE TABLESPACE {} LOCATION '{}'",
                rehearse_core::script::quote_ident(name),
                dir.display()
            ),
        )
        .await
    }

    /// Dumps the whole server with the real pg_dumpall to `out`: roles, tablespaces and every
    /// database (the most common cluster backup).
    pub async fn dump_all(&self, out: &Path) -> Result<(), String> {
        let cluster = self.cluster.as_ref().ok_or("sample database is stopped")?;
        let mut tool = cluster.tool("pg_dumpall", false);
        tool.args.push("-f".into());
        tool.args.push(out.into());
        let output = cluster.sandbox().run(tool, None).await?;
        if output.success() {
            Ok(())
        } else {
            Err(output.failure("pg_dumpall"))
        }
    }

    /// Stops the server and removes its directory.
    pub async fn stop(mut self) -> Result<(), String> {
        match self.cluster.take() {
            Some(cluster) => cluster.stop().await,
            None => Ok(()),
        }
    }
}

/// The plan `rehearse demo` verifies a sample dump with.
pub fn demo_plan(dump: &Path, orders: u32, blake3: Option<String>) -> Plan {
    let check = |name: &str, sql: &str, expect: String| RawCheck {
        name: name.into(),
        sql: sql.into(),
        expect,
        database: None,
    };
    let raw = RawPlan {
        name: Some("demo: shop database".into()),
        timeout: Some("10m".into()),
        artifact: RawArtifact {
            url: format!("file://{}", dump.display()),
            engine: "postgres".into(),
            blake3,
            ..RawArtifact::default()
        },
        targets: Some(RawTargets {
            rto: Some("5m".into()),
            rpo: Some("26h".into()),
            freshness: Some("SELECT max(created_at) FROM orders".into()),
            promote: None,
        }),
        checks: vec![
            check(
                "orders",
                "SELECT count(*) FROM orders",
                format!(">= {orders}"),
            ),
            check(
                "customers",
                "SELECT count(*) FROM customers",
                format!("= {}", (orders.max(10) / 10).max(1)),
            ),
            check(
                "no negative totals",
                "SELECT count(*) FROM orders WHERE total < 0",
                "= 0".into(),
            ),
            check(
                "every order has its customer",
                "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL",
                "= 0".into(),
            ),
        ],
        builtin: None,
        placement: None,
        max_attempts: None,
        sandbox: None,
        files: None,
        pitr: None,
        promote: None,
        export: None,
    };
    // The plan is built from constants above; a failure here is a bug in this function.
    Plan::from_raw(raw).unwrap_or_else(|e| panic!("demo plan is invalid: {e}"))
}

/// The shop database in MariaDB, dumped with the real mariadb-dump to `out` (tables only, no
/// `CREATE DATABASE`: they restore into the sandbox's target database). Same shape as the
/// PostgreSQL sample: customers, orders (the newest an hour old), an index, a view, a foreign key.
pub async fn mysql_sample(verifier: &Verifier, orders: u32, out: &Path) -> Result<(), String> {
    use crate::engines::mysql::{MariaServer, Which};
    let install = verifier.maria()?;
    let mut server = MariaServer::create(verifier.runtime(), install)?;
    let made = async {
        server
            .start(verifier.runtime(), &verifier.options().cache_dir, None)
            .await?;
        let orders = orders.max(10);
        let customers = (orders / 10).max(1);
        server
            .query_xml(
                None,
                &format!(
                    "CREATE DATABASE {DATABASE}; USE {DATABASE};
                     CREATE TABLE customers (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(200) NOT NULL UNIQUE, created_at DATETIME NOT NULL) ENGINE=InnoDB;
                     CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, total DECIMAL(12,2) NOT NULL CHECK (total >= 0),
                                          status VARCHAR(20) NOT NULL, created_at DATETIME NOT NULL, KEY orders_created_at (created_at),
                                          FOREIGN KEY (customer_id) REFERENCES customers (id)) ENGINE=InnoDB;
                     CREATE VIEW daily_revenue AS SELECT DATE(created_at) AS day, SUM(total) AS revenue FROM orders GROUP BY 1;
                     SET time_zone = '+00:00';
                     INSERT INTO customers SELECT seq, CONCAT('customer ', seq), CONCAT('c', seq, '@example.com'), UTC_TIMESTAMP() - INTERVAL 400 DAY + INTERVAL seq MINUTE
                       FROM seq_1_to_{customers};
                     INSERT INTO orders SELECT seq, 1 + seq % {customers}, ROUND(RAND() * 500, 2), ELT(1 + seq % 3, 'paid', 'shipped', 'refunded'),
                                               UTC_TIMESTAMP() - INTERVAL 1 HOUR - INTERVAL (({orders} - seq) * 37) SECOND
                       FROM seq_1_to_{orders};"
                ),
            )
            .await
            .map_err(|e| format!("fill sample database: {e}"))?;
        let mut tool = server.tool(Which::Dump);
        tool.capture_stdout = true;
        tool.args
            .extend(["--single-transaction".into(), DATABASE.into()]);
        let dumped = server.sandbox().run(tool, None).await?;
        if !dumped.success() {
            return Err(dumped.failure("mariadb-dump"));
        }
        std::fs::write(out, &dumped.stdout).map_err(|e| format!("write {}: {e}", out.display()))
    }
    .await;
    let stopped = server.stop().await;
    made.and(stopped)
}
