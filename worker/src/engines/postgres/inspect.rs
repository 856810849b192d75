//! Looking at the restored data: the plan's checks, the freshness query (for RPO), exact row counts
//! of every table, and `pg_amcheck` (heap and B-tree structure) where it is installed.

use std::path::Path;

use rehearse_core::plan::Plan;
use rehearse_core::report::{IntegrityReport, TableRows};
use rehearse_core::script::quote_ident;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::SUPERUSER;
use super::cluster::{PORT, PgCluster};
use crate::engines::inspection::{Inspection, check_report};
use crate::tail;

/// Opens a connection over the sandbox's unix socket.
pub async fn connect(socket_dir: &Path, database: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(PORT)
        .user(SUPERUSER)
        .dbname(database)
        .application_name("rehearse")
        .connect(NoTls)
        .await
        .map_err(|e| format!("connect to database {database:?}: {}", db_message(&e)))?;
    // The connection task ends when the client is dropped or the server goes away.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub async fn create_database(socket_dir: &Path, name: &str) -> Result<(), String> {
    let client = connect(socket_dir, "postgres").await?;
    client
        .simple_query(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(name)
        ))
        .await
        .map(drop)
        .map_err(|e| format!("create database {name}: {}", db_message(&e)))
}

/// The server's own words when there are some, else the client error.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity().to_lowercase(), db.message()),
        None => e.to_string(),
    }
}

/// First column of the first row, as text (`None` for no row or NULL).
async fn first_value(client: &Client, sql: &str) -> Result<Option<String>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| db_message(&e))?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten())
}

/// Runs the plan's checks (each in its database), the freshness query (in `main`), the row
/// counts of every restored database, and pg_amcheck over all of them. `databases` holds one
/// database, or every database of a cluster dump (then table names carry their database:
/// `appdb.public.orders`).
pub async fn inspect(
    cluster: &PgCluster,
    main: &str,
    databases: &[String],
    plan: &Plan,
    jobs: usize,
) -> Result<Inspection, String> {
    let client = connect(&cluster.socket_dir(), main).await?;
    // The plan's checks, the row counts (own connection) and pg_amcheck (own process) are
    // independent: they run side by side, and their results are read in that order after.
    let plan_checks = async {
        let mut reports = Vec::with_capacity(plan.checks.len());
        let mut others: std::collections::HashMap<String, Result<Client, String>> =
            std::collections::HashMap::new();
        for check in &plan.checks {
            let result = match check.database.as_deref() {
                None => first_value(&client, &check.sql).await,
                Some(db) if db == main => first_value(&client, &check.sql).await,
                Some(db) => {
                    if !others.contains_key(db) {
                        let opened = if databases.iter().any(|d| d == db) {
                            connect(&cluster.socket_dir(), db).await
                        } else {
                            Err(format!(
                                "the restored dump has no database {db:?} (it has: {})",
                                databases.join(", ")
                            ))
                        };
                        others.insert(db.to_owned(), opened);
                    }
                    match &others[db] {
                        Ok(c) => first_value(c, &check.sql).await,
                        Err(e) => Err(e.clone()),
                    }
                }
            };
            reports.push(check_report(check, result));
        }
        let newest = match &plan.targets.freshness {
            Some(sql) => freshness(&client, sql).await,
            None => Ok(None),
        };
        let exported = match &plan.export {
            Some(sql) => Some(export(&client, sql).await),
            None => None,
        };
        (reports, newest, exported)
    };
    let counts = async {
        if !plan.builtin.row_counts {
            return None;
        }
        let mut all = Vec::new();
        for db in databases {
            let counted = match connect(&cluster.socket_dir(), db).await {
                Ok(counter) => row_counts(&counter).await,
                Err(e) => Err(e),
            };
            match counted {
                Ok(tables) if databases.len() > 1 => {
                    all.extend(tables.into_iter().map(|t| TableRows {
                        name: format!("{db}.{}", t.name),
                        rows: t.rows,
                    }));
                }
                Ok(tables) => all.extend(tables),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(all))
    };
    let integrity = async {
        if plan.builtin.integrity {
            Some(amcheck(cluster, databases, jobs).await)
        } else {
            None
        }
    };
    let ((checks, newest, exported), counts, integrity) =
        tokio::join!(plan_checks, counts, integrity);
    let mut found = Inspection::default();
    for check in &checks {
        if let Some(reason) = &check.reason {
            found.fail(format!("check {:?}: {reason}", check.name));
        }
    }
    found.checks = checks;
    match newest {
        Ok(newest) => found.newest = newest,
        Err(e) => found.fail(format!("freshness query failed: {e}")),
    }
    match exported {
        Some(Ok(e)) => found.exported = Some(e),
        Some(Err(e)) => found.fail(format!("export query failed: {e}")),
        None => {}
    }
    match counts {
        Some(Ok(tables)) => found.tables = tables,
        Some(Err(e)) => found.fail(format!("row counts failed: {e}")),
        None => {}
    }
    match integrity {
        Some(Amcheck::Ran(report)) => {
            if !report.ok {
                found.fail(format!(
                    "pg_amcheck found corruption: {}",
                    tail::last_lines(&report.output, 2)
                ));
            }
            found.integrity = Some(report);
        }
        Some(Amcheck::Unavailable(why)) => {
            found.notes.push(format!("integrity check skipped: {why}"))
        }
        None => {}
    }
    Ok(found)
}

/// The export query's first column, every row (NULLs left out), up to the limit.
async fn export(client: &Client, sql: &str) -> Result<rehearse_core::report::Exported, String> {
    let messages = client.simple_query(sql).await.map_err(|e| db_message(&e))?;
    let mut rows = Vec::new();
    let mut truncated = false;
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m
            && let Some(v) = row.get(0)
        {
            if rows.len() == rehearse_core::plan::EXPORT_LIMIT {
                truncated = true;
                break;
            }
            rows.push(v.to_owned());
        }
    }
    Ok(rehearse_core::report::Exported {
        sql: sql.to_owned(),
        rows,
        truncated,
    })
}

/// Runs the freshness query wrapped so the server does the time arithmetic: a `timestamptz`,
/// `timestamp` (taken as UTC) or `date` comes back as ms since the epoch.
async fn freshness(client: &Client, sql: &str) -> Result<Option<(i64, String)>, String> {
    let inner = sql.trim().trim_end_matches(';');
    let wrapped = format!(
        "SELECT (extract(epoch FROM f.t) * 1000)::float8::text, f.t::text FROM ({inner}) AS f(t) LIMIT 1"
    );
    let messages = client
        .simple_query(&wrapped)
        .await
        .map_err(|e| db_message(&e))?;
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            let (Some(ms), Some(text)) = (row.get(0), row.get(1)) else {
                return Ok(None);
            };
            let ms = ms
                .parse::<f64>()
                .map_err(|_| format!("freshness value {text:?} is not a time"))?;
            return Ok(Some((ms as i64, text.to_owned())));
        }
    }
    Ok(None)
}

async fn row_counts(client: &Client) -> Result<Vec<TableRows>, String> {
    // Ordinary and partitioned tables; partitions are counted through their parent.
    let list = "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                ORDER BY 1, 2";
    let mut tables = Vec::new();
    for m in client
        .simple_query(list)
        .await
        .map_err(|e| db_message(&e))?
    {
        let SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let (Some(schema), Some(name)) = (row.get(0), row.get(1)) else {
            continue;
        };
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(schema),
            quote_ident(name)
        );
        let rows = first_value(client, &sql)
            .await
            .map_err(|e| format!("{schema}.{name}: {e}"))?;
        let rows = rows.and_then(|r| r.parse().ok()).unwrap_or(0);
        tables.push(TableRows {
            name: format!("{schema}.{name}"),
            rows,
        });
    }
    Ok(tables)
}

enum Amcheck {
    Ran(IntegrityReport),
    Unavailable(String),
}

async fn amcheck(cluster: &PgCluster, databases: &[String], jobs: usize) -> Amcheck {
    if let Err(why) = cluster.has_tool("pg_amcheck") {
        return Amcheck::Unavailable(why);
    }
    let mut tool = cluster.tool("pg_amcheck", false);
    tool.capture_stdout = true;
    tool.args.extend(
        [
            "--install-missing".to_owned(),
            "--no-strict-names".to_owned(),
            "-j".to_owned(),
            jobs.max(1).to_string(),
        ]
        .map(Into::into),
    );
    for db in databases {
        tool.args.push("-d".into());
        tool.args.push(db.into());
    }
    let out = match cluster.sandbox().run(tool, None).await {
        Ok(out) => out,
        Err(e) => return Amcheck::Unavailable(format!("run pg_amcheck: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = out.stderr.trim().to_owned();
    match out.code {
        Some(0) => Amcheck::Ran(IntegrityReport {
            tool: "pg_amcheck".into(),
            ok: true,
            output: stdout,
        }),
        // pg_amcheck: exit 2 means it found corruption.
        Some(2) => Amcheck::Ran(IntegrityReport {
            tool: "pg_amcheck".into(),
            ok: false,
            output: format!("{stdout}\n{stderr}").trim().to_owned(),
        }),
        _ if stderr.contains("extension") => Amcheck::Unavailable(format!(
            "the amcheck extension is not available: {}",
            tail::last_lines(&stderr, 1)
        )),
        _ => Amcheck::Ran(IntegrityReport {
            tool: "pg_amcheck".into(),
            ok: false,
            output: format!(
                "pg_amcheck failed ({}): {}",
                out.status,
                tail::last_lines(&stderr, 2)
            ),
        }),
    }
}
