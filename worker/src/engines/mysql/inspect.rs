//! Looking at restored MariaDB data: the plan's checks, freshness (RPO), exact row counts of every
//! table, and `mariadb-check` as the integrity check.

use rehearse_core::mysqlxml;
use rehearse_core::plan::Plan;
use rehearse_core::report::{IntegrityReport, TableRows};

use super::server::{MariaServer, Which, system_list};
use crate::engines::inspection::{Inspection, check_report};
use crate::tail;

/// Runs the checks phase against `database`.
pub async fn inspect(server: &MariaServer, database: &str, plan: &Plan) -> Inspection {
    let mut found = Inspection::default();
    for check in &plan.checks {
        let result = match server.query_xml(Some(database), &check.sql).await {
            Ok(xml) => mysqlxml::first_value(&xml)
                .map(Option::flatten)
                .map_err(|e| format!("unreadable result: {e}")),
            Err(e) => Err(e),
        };
        let report = check_report(check, result);
        if let Some(reason) = &report.reason {
            found.fail(format!("check {:?}: {reason}", check.name));
        }
        found.checks.push(report);
    }
    if let Some(sql) = &plan.targets.freshness {
        match freshness(server, database, sql).await {
            Ok(newest) => found.newest = newest,
            Err(e) => found.fail(format!("freshness query failed: {e}")),
        }
    }
    if let Some(sql) = &plan.export {
        let rows = server
            .query_xml(Some(database), sql)
            .await
            .and_then(|xml| mysqlxml::rows(&xml).map_err(|e| format!("unreadable result: {e}")));
        match rows {
            Ok(rows) => {
                let mut firsts: Vec<String> = rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect();
                let truncated = firsts.len() > rehearse_core::plan::EXPORT_LIMIT;
                firsts.truncate(rehearse_core::plan::EXPORT_LIMIT);
                found.exported = Some(rehearse_core::report::Exported {
                    sql: sql.clone(),
                    rows: firsts,
                    truncated,
                });
            }
            Err(e) => found.fail(format!("export query failed: {e}")),
        }
    }
    if plan.builtin.row_counts {
        match row_counts(server).await {
            Ok(tables) => found.tables = tables,
            Err(e) => found.fail(format!("row counts failed: {e}")),
        }
    }
    if plan.builtin.integrity {
        let report = check_tables(server).await;
        if !report.ok {
            found.fail(format!(
                "mariadb-check found problems: {}",
                tail::last_lines(&report.output, 2)
            ));
        }
        found.integrity = Some(report);
    }
    found
}

/// The freshness query's single value, converted by the server (session time zone UTC) to ms
/// since the epoch, and as the server printed it.
async fn freshness(
    server: &MariaServer,
    database: &str,
    sql: &str,
) -> Result<Option<(i64, String)>, String> {
    let inner = sql.trim().trim_end_matches(';');
    let wrapped = format!(
        "SET time_zone = '+00:00'; SELECT UNIX_TIMESTAMP(f.t) * 1000, CAST(f.t AS CHAR) FROM (SELECT ({inner}) AS t) AS f"
    );
    let xml = server.query_xml(Some(database), &wrapped).await?;
    let Some(row) = mysqlxml::rows(&xml)?.into_iter().next() else {
        return Ok(None);
    };
    let (Some(Some(ms)), Some(Some(text))) = (row.first(), row.get(1)) else {
        return Ok(None);
    };
    let ms: f64 = ms
        .parse()
        .map_err(|_| format!("freshness value {text:?} is not a time"))?;
    Ok(Some((ms as i64, text.clone())))
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Exact row counts of every base table outside the system schemas, in one statement.
async fn row_counts(server: &MariaServer) -> Result<Vec<TableRows>, String> {
    let list = server
        .query_xml(
            None,
            &format!(
                "SELECT table_schema, table_name FROM information_schema.tables \
                 WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ({}) ORDER BY 1, 2",
                system_list()
            ),
        )
        .await?;
    let tables: Vec<(String, String)> = mysqlxml::rows(&list)?
        .into_iter()
        .filter_map(|r| Some((r.first().cloned()??, r.get(1).cloned()??)))
        .collect();
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let counts_sql = tables
        .iter()
        .enumerate()
        .map(|(i, (schema, name))| {
            format!(
                "SELECT {i}, COUNT(*) FROM {}.{}",
                quote(schema),
                quote(name)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let counts = mysqlxml::rows(&server.query_xml(None, &counts_sql).await?)?;
    let mut out: Vec<TableRows> = tables
        .iter()
        .map(|(schema, name)| TableRows {
            name: format!("{schema}.{name}"),
            rows: 0,
        })
        .collect();
    for row in counts {
        let index: Option<usize> = row.first().cloned().flatten().and_then(|i| i.parse().ok());
        let rows: Option<u64> = row.get(1).cloned().flatten().and_then(|n| n.parse().ok());
        if let (Some(i), Some(n)) = (index, rows)
            && let Some(t) = out.get_mut(i)
        {
            t.rows = n;
        }
    }
    Ok(out)
}

/// `mariadb-check` over every restored schema: table structure and index consistency.
async fn check_tables(server: &MariaServer) -> IntegrityReport {
    let report = |ok: bool, output: String| IntegrityReport {
        tool: "mariadb-check".into(),
        ok,
        output,
    };
    let mut tool = server.tool(Which::Check);
    tool.capture_stdout = true;
    tool.args.push("--all-databases".into());
    let out = match server.sandbox().run(tool, None).await {
        Ok(out) => out,
        Err(e) => return report(false, format!("run mariadb-check: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One line per table ("db.t   OK"), or the table's name followed by "error : …" lines.
    // System schemas are skipped in the findings (they are the image's, not the dump's).
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            let l = l.trim_start().to_ascii_lowercase();
            l.starts_with("error") || l.contains("corrupt")
        })
        .collect();
    if !out.success() || !problems.is_empty() {
        let mut said = problems.join("\n");
        if said.is_empty() {
            said = out.failure("mariadb-check");
        }
        return report(false, said);
    }
    let tables = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("OK"))
        .count();
    report(true, format!("{tables} tables OK"))
}
