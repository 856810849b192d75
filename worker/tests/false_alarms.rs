//! Good backups that used to end `failed` (false alarms), and environment problems that used to
//! be blamed on the backup. Every dump here is made by the real tools (pg_dump, pg_dumpall,
//! mariadb-dump) from a real server, or — for MySQL 8, which this machine does not have — written
//! in the exact shape mysqldump 8.0 writes. Each test failed before its fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rehearse_core::report::Verdict;
use rehearse_worker::runtime::RuntimeChoice;
use rehearse_worker::sample::{DumpFormat, SampleDatabase};

mod common;
use common::*;

const DOCKER: RuntimeChoice = RuntimeChoice::Docker;
const PROCESS: RuntimeChoice = RuntimeChoice::Process;

/// A fresh directory for this test's dumps, reachable by the sandbox user.
fn dumps_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rh-dumps-")
        .tempdir_in(target_tmp())
        .expect("dumps dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Bug 2: `pg_dump -Fd` writes its directory 0700 and backups are usually 0600, owned by a
/// backup user. The docker runtime must restore them whatever their mode and owner.
#[tokio::test]
async fn restrictive_modes_and_another_owner_restore_in_docker() {
    let fx = fixtures().await;
    let env = env_for(DOCKER).await;
    let dir = dumps_dir();
    let root = nix::unistd::Uid::effective().is_root();
    let backup_user = nix::unistd::Uid::from_raw(4242);
    let lock = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        if root {
            nix::unistd::chown(
                path,
                Some(backup_user),
                Some(nix::unistd::Gid::from_raw(4242)),
            )
            .expect("chown");
        }
    };
    let custom = dir.path().join("shop.dump");
    fs::copy(fx.join("custom.dump"), &custom).expect("copy");
    lock(&custom, 0o600);
    let directory = dir.path().join("shop.dir");
    fs::create_dir(&directory).expect("mkdir");
    for entry in fs::read_dir(fx.join("dir.dump"))
        .expect("dir dump")
        .flatten()
    {
        let to = directory.join(entry.file_name());
        fs::copy(entry.path(), &to).expect("copy");
        lock(&to, 0o600);
    }
    lock(&directory, 0o700);
    for (artifact, format) in [
        (&custom, "pg_dump custom"),
        (&directory, "pg_dump directory"),
    ] {
        let report = env.verify(&plan(artifact, &shop_checks())).await;
        assert_passed(&report);
        assert_eq!(report.runtime, "docker");
        assert_eq!(report.artifact.format.as_deref(), Some(format));
        assert_shop_counted(&report, "public");
    }
    // The originals were only read.
    assert_eq!(
        fs::metadata(&custom).expect("meta").permissions().mode() & 0o777,
        0o600
    );
}

/// Bug 5: `pg_dumpall > all.sql` (roles, then every database with `\connect`) ended
/// `role "postgres" already exists`. Now: roles and every database restored, row counts per
/// database, checks that name their database.
#[tokio::test]
async fn a_pg_dumpall_cluster_dump_verifies_every_database() {
    let env = env();
    let dir = dumps_dir();
    let all = dir.path().join("all.sql");
    let db = SampleDatabase::create(&env.verifier, ORDERS)
        .await
        .expect("sample");
    for sql in [
        "CREATE ROLE app LOGIN PASSWORD 'secret'",
        "CREATE DATABASE appdb OWNER app",
    ] {
        db.execute("postgres", sql).await.expect("appdb");
    }
    db.execute(
        "appdb",
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 123) g; \
         ALTER TABLE items OWNER TO app;",
    )
    .await
    .expect("items");
    db.dump_all(&all).await.expect("pg_dumpall");
    db.stop().await.expect("stop");
    let text = fs::read_to_string(&all).expect("dump");
    assert!(text.contains("PostgreSQL database cluster dump"));
    assert!(
        text.contains("CREATE ROLE postgres;"),
        "the real pg_dumpall output names the bootstrap role"
    );

    let checks = format!(
        "[[checks]]\nname = \"orders\"\ndatabase = \"shop\"\nsql = \"SELECT count(*) FROM orders\"\nexpect = \"= {ORDERS}\"\n\
         [[checks]]\nname = \"items\"\ndatabase = \"appdb\"\nsql = \"SELECT count(*) FROM items\"\nexpect = \"= 123\"\n\
         [[checks]]\nname = \"app owns items\"\ndatabase = \"appdb\"\nsql = \"SELECT tableowner FROM pg_tables WHERE tablename = 'items'\"\nexpect = \"= 'app'\"\n"
    );
    let report = env.verify(&plan(&all, &checks)).await;
    assert_passed(&report);
    let rows = |name: &str| {
        report
            .tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.rows)
    };
    assert_eq!(
        rows("shop.public.orders"),
        Some(u64::from(ORDERS)),
        "{:?}",
        report.tables
    );
    assert_eq!(rows("appdb.public.items"), Some(123), "{:?}", report.tables);
    assert!(report.integrity.as_ref().is_some_and(|i| i.ok));
    assert!(
        report.notes.iter().any(|n| n.contains("cluster dump")),
        "{:?}",
        report.notes
    );

    // A check naming a database the dump does not hold fails, and says which it has.
    let missing = "[[checks]]\nname = \"ghost\"\ndatabase = \"nosuchdb\"\nsql = \"SELECT 1\"\nexpect = \"= 1\"\n";
    let report = env.verify(&plan(&all, missing)).await;
    assert_failed_in(&report, "checks", "no database \"nosuchdb\"");
}

/// Bug 6: tablespaces are mapped away (the restore goes on); a missing extension is "could not
/// verify", never a failed backup.
#[tokio::test]
async fn tablespaces_map_away_and_a_missing_extension_is_could_not_verify() {
    let env = env();
    let dir = dumps_dir();
    let db = SampleDatabase::create(&env.verifier, 100)
        .await
        .expect("sample");
    db.add_tablespace(&env.verifier, "fastssd")
        .await
        .expect("tablespace");
    db.execute(
        "shop",
        "CREATE TABLE hot (id int PRIMARY KEY) TABLESPACE fastssd; \
         INSERT INTO hot SELECT generate_series(1, 77); \
         CREATE EXTENSION pg_trgm;",
    )
    .await
    .expect("hot table");
    let custom = dir.path().join("ts.dump");
    let plain = dir.path().join("ts.sql");
    let all = dir.path().join("ts-all.sql");
    db.dump(DumpFormat::Custom, &custom).await.expect("custom");
    db.dump(DumpFormat::Plain, &plain).await.expect("plain");
    db.dump_all(&all).await.expect("pg_dumpall");
    db.stop().await.expect("stop");
    let plain_text = fs::read_to_string(&plain).expect("plain");
    assert!(
        plain_text.contains("SET default_tablespace = fastssd;"),
        "real pg_dump output"
    );
    assert!(
        fs::read_to_string(&all)
            .expect("all")
            .contains("CREATE TABLESPACE fastssd")
    );

    let hot = "[[checks]]\nname = \"hot\"\nsql = \"SELECT count(*) FROM hot\"\nexpect = \"= 77\"\n";
    for artifact in [&custom, &plain] {
        let report = env.verify(&plan(artifact, hot)).await;
        assert_passed(&report);
        assert!(
            report.notes.iter().any(|n| n.contains("tablespace")),
            "{:?}",
            report.notes
        );
    }
    let hot_in_shop = "[[checks]]\nname = \"hot\"\ndatabase = \"shop\"\nsql = \"SELECT count(*) FROM hot\"\nexpect = \"= 77\"\n";
    assert_passed(&env.verify(&plan(&all, hot_in_shop)).await);

    // The same real dump, needing an extension this server does not ship.
    let needs_postgis = dir.path().join("postgis.sql");
    fs::write(&needs_postgis, plain_text.replace("pg_trgm", "postgis")).expect("write");
    let report = env.verify(&plan(&needs_postgis, "")).await;
    assert_error_in(&report, "restore", "the sandbox has no extension postgis");
    assert!(
        report
            .failure
            .as_ref()
            .is_some_and(|f| f.reason.contains("[sandbox] image"))
    );
}

/// A dump in the shape mysqldump 8.0 writes: its header, `utf8mb4_0900_ai_ci` everywhere, GTID
/// state, and 8.0-only clauses in versioned comments.
fn mysql8_dump() -> String {
    "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
--
-- Host: localhost    Database: shop
-- ------------------------------------------------------
-- Server version\t8.0.36

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!50503 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;
/*!40103 SET TIME_ZONE='+00:00' */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;
SET @@SESSION.SQL_LOG_BIN= 0;

--
-- GTID state at the beginning of the backup 
--

SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-105,
9f0a2b1c-71ca-11e1-9e33-c80aa9429562:1-12';

--
-- Table structure for table `customers`
--

DROP TABLE IF EXISTS `customers`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!50503 SET character_set_client = utf8mb4 */;
CREATE TABLE `customers` (
  `id` bigint NOT NULL,
  `name` varchar(100) COLLATE utf8mb4_0900_ai_ci NOT NULL,
  `email` varchar(200) NOT NULL,
  `created_at` datetime NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `email` (`email`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci;
/*!40101 SET character_set_client = @saved_cs_client */;

LOCK TABLES `customers` WRITE;
/*!40000 ALTER TABLE `customers` DISABLE KEYS */;
INSERT INTO `customers` VALUES (1,'customer 1','c1@example.com','2025-10-27 10:00:00'),(2,'utf8mb4_0900_ai_ci','c2@example.com','2025-10-27 10:01:00');
/*!40000 ALTER TABLE `customers` ENABLE KEYS */;
UNLOCK TABLES;

DROP TABLE IF EXISTS `orders`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!50503 SET character_set_client = utf8mb4 */;
CREATE TABLE `orders` (
  `id` bigint NOT NULL,
  `customer_id` bigint NOT NULL,
  `total` decimal(12,2) NOT NULL,
  `status` varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_as_cs NOT NULL,
  `created_at` datetime NOT NULL,
  `secret` varbinary(16) DEFAULT NULL /*!80023 INVISIBLE */,
  PRIMARY KEY (`id`),
  KEY `customer_id` (`customer_id`),
  CONSTRAINT `orders_ibfk_1` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci /*!80016 DEFAULT ENCRYPTION='N' */;
/*!40101 SET character_set_client = @saved_cs_client */;

LOCK TABLES `orders` WRITE;
/*!40000 ALTER TABLE `orders` DISABLE KEYS */;
INSERT INTO `orders` (`id`, `customer_id`, `total`, `status`, `created_at`) VALUES (1,1,10.50,'paid','2026-11-30 09:00:00'),(2,2,20.00,'shipped','2026-11-30 10:00:00'),(3,1,5.25,'refunded','2026-11-30 11:00:00');
/*!40000 ALTER TABLE `orders` ENABLE KEYS */;
UNLOCK TABLES;
SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
/*!40014 SET UNIQUE_CHECKS=@OLD_UNIQUE_CHECKS */;

-- Dump completed on 2026-11-30 12:00:00
"
    .to_owned()
}

async fn mysql8_dump_restores(rt: RuntimeChoice) {
    let env = env_for(rt).await;
    let dump = env.file("mysql8.sql", mysql8_dump().as_bytes());
    let plan = engine_plan(
        "mysql",
        &dump,
        "[[checks]]\nname = \"orders\"\nsql = \"SELECT count(*) FROM orders\"\nexpect = \"= 3\"\n\
         [[checks]]\nname = \"data kept as written\"\nsql = \"SELECT count(*) FROM customers WHERE name = 'utf8mb4_0900_ai_ci'\"\nexpect = \"= 1\"\n\
         [[checks]]\nname = \"mapped collation\"\nsql = \"SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_NAME = 'orders'\"\nexpect = \"= 'utf8mb4_uca1400_ai_ci'\"\n",
    );
    let report = env.verify(&plan).await;
    assert_passed(&report);
    let notes = report.notes.join("\n");
    for expected in [
        "MySQL 8.0.36 dump",
        "collation utf8mb4_0900_ai_ci mapped to utf8mb4_uca1400_ai_ci",
        "collation utf8mb4_0900_as_cs mapped to utf8mb4_uca1400_as_cs",
        "GTID_PURGED dropped",
        "/*!80016",
        "/*!80023",
    ] {
        assert!(
            notes.contains(expected),
            "{expected:?} not in notes:\n{notes}"
        );
    }
}

/// Bug 7: MySQL 8 dumps ended `Unknown collation: 'utf8mb4_0900_ai_ci'` in the MariaDB sandbox.
#[tokio::test]
async fn a_mysql8_dump_restores_in_mariadb_with_its_mappings_listed() {
    mysql8_dump_restores(PROCESS).await;
}

#[tokio::test]
async fn a_mysql8_dump_restores_in_a_mariadb_container() {
    mysql8_dump_restores(DOCKER).await;
}

/// A plain dump whose restore writes about `mb` MiB of table data (made by the server itself).
fn big_dump(env: &TestEnv, name: &str, mb: u32) -> PathBuf {
    let rows = mb * 1024;
    let sql = format!(
        "--\n-- PostgreSQL database dump\n--\n\
         CREATE TABLE public.big (id integer PRIMARY KEY, pad text NOT NULL);\n\
         INSERT INTO public.big SELECT g, repeat(md5(g::text), 31) FROM generate_series(1, {rows}) g;\n"
    );
    env.file(name, sql.as_bytes())
}

/// Bug 8: a container held at most its memory limit of data (the database was on a tmpfs sized
/// to it). Now the data is on a disk-backed dir by default, capped by `[sandbox] disk`; running
/// out of that space is `error` naming the limit, never `failed`.
#[tokio::test]
async fn container_data_lives_on_disk_and_its_limit_is_could_not_verify() {
    let env = env_for(DOCKER).await;
    let dump = big_dump(&env, "big.sql", 300);
    let big =
        "[[checks]]\nname = \"big\"\nsql = \"SELECT count(*) FROM big\"\nexpect = \"= 307200\"\n";
    // 300 MiB of data with a 256 MiB memory limit: only a disk-backed data dir holds it.
    let report = env
        .verify(&plan(
            &dump,
            &format!("{big}[sandbox]\nmemory = \"256MiB\"\n"),
        ))
        .await;
    assert_passed(&report);
    assert!(
        report.notes.iter().any(|n| n.contains("data on disk")),
        "{:?}",
        report.notes
    );
    // The same on a tmpfs (sized to memory, and counted against it): the sandbox's limit is
    // reached — could not verify, not a bad backup.
    let report = env
        .verify(&plan(
            &dump,
            &format!("{big}[sandbox]\nmemory = \"256MiB\"\ndata = \"tmpfs\"\n"),
        ))
        .await;
    assert_error_in(&report, "restore", "[sandbox] memory");
    // A disk limit below the data: stopped, `error`, naming the limit.
    let report = env
        .verify(&plan(
            &dump,
            &format!("{big}[sandbox]\ndisk = \"100MiB\"\n"),
        ))
        .await;
    assert_error_in(&report, "restore", "[sandbox] disk = 100MiB");
    assert_ne!(report.verdict, Verdict::Failed);
}
