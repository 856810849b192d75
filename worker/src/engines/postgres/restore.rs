//! Restoring a dump into the sandbox cluster.
//!
//! - Custom and directory archives: `pg_restore -j N` straight from the file (parallel restore
//!   needs a seekable archive); tar archives: `pg_restore` from the file (tar cannot restore in
//!   parallel).
//! - Compressed archives and every plain SQL script: streamed in one pass — read, decompressed,
//!   (plain only) filtered through [`ScriptFilter`] — into the tool's stdin, with bounded memory.
//!
//! Archives restore with `--no-owner --no-privileges --no-tablespaces`: roles live outside a
//! database dump, and the sandbox has none of the source's tablespaces. Plain scripts keep their
//! owners and grants; the filter creates the roles they name and maps tablespaces away. A
//! cluster dump (`pg_dumpall`) restores every database it holds; each is inspected.
//! Any restore error fails the verification, with the tool's stderr tail as the reason.

use std::path::{Path, PathBuf};

use rehearse_core::script::ScriptFilter;

use super::cluster::PgCluster;
use super::{SUPERUSER, TARGET_DB};
use crate::engines::stream::{Compression, Feed, LineFilter, start_feed};
use std::sync::Arc;

use crate::progress::Meter;
use crate::runtime::{StderrWatch, Tool};

/// What to restore and how.
#[derive(Debug, Clone)]
pub enum Input {
    /// A custom or directory archive pg_restore can seek in: parallel restore.
    SeekableArchive(PathBuf),
    /// A tar archive file: pg_restore reads it, one job.
    TarArchive(PathBuf),
    /// A compressed custom or tar archive, decompressed into pg_restore's stdin.
    ArchiveStream(PathBuf, Compression),
    /// A plain SQL script (optionally compressed), filtered into psql's stdin.
    Plain(PathBuf, Compression),
}

/// The outcome of a successful restore.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The database holding the restored data (for a cluster dump: the one checks run in when
    /// they name none).
    pub database: String,
    /// Every database restored (one, unless the artifact is a cluster dump).
    pub databases: Vec<String>,
    pub notes: Vec<String>,
}

/// Restores `input`; `Err` is the failure reason for phase `restore`. With a `meter` (someone
/// draws the progress), an archive file's TOC is listed first and pg_restore runs `--verbose`,
/// each item it is done with counted on the meter.
pub async fn restore(
    cluster: &PgCluster,
    input: Input,
    jobs: usize,
    meter: Option<Arc<Meter>>,
) -> Result<Restored, String> {
    super::inspect::create_database(&cluster.socket_dir(), TARGET_DB).await?;
    let at = |path: &Path| cluster.sandbox().tool_path(path).into_os_string();
    match input {
        Input::Plain(path, compression) => restore_plain(cluster, path, compression).await,
        // Parallel restore needs a seekable custom or directory archive.
        Input::SeekableArchive(path) => {
            let counted = count_items(cluster, &at(&path), meter.as_ref()).await;
            restore_archive(
                cluster,
                vec![format!("--jobs={}", jobs.max(1)).into(), at(&path)],
                None,
                counted,
            )
            .await
        }
        Input::TarArchive(path) => {
            let counted = count_items(cluster, &at(&path), meter.as_ref()).await;
            restore_archive(cluster, vec![at(&path)], None, counted).await
        }
        Input::ArchiveStream(path, compression) => {
            restore_archive(
                cluster,
                Vec::new(),
                Some(Feed {
                    path,
                    compression,
                    filter: None,
                }),
                None,
            )
            .await
        }
    }
}

/// psql, fed through the script filter, as the sandbox user.
async fn restore_plain(
    cluster: &PgCluster,
    path: PathBuf,
    compression: Compression,
) -> Result<Restored, String> {
    let mut tool = cluster.tool("psql", true);
    let connection = std::mem::take(&mut tool.args);
    tool.args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", TARGET_DB]
        .map(Into::into)
        .to_vec();
    tool.args.extend(connection);
    let nonce = crate::random_token();
    let key = cluster.psql_restrict.then(crate::random_token);
    let mut notes = Vec::new();
    if key.is_none() {
        notes.push(format!(
            "psql {} has no restricted mode: meta-commands are refused only at the start of a line",
            cluster.version
        ));
    }
    let filter = ScriptFilter::new(key, &nonce, &[SUPERUSER]);
    let filter = run_tool(
        cluster,
        tool,
        Some(Feed {
            path,
            compression,
            filter: Some(filter),
        }),
    )
    .await?;
    let cluster_dump = filter.as_ref().is_some_and(ScriptFilter::is_cluster_dump);
    let (database, databases) = if cluster_dump {
        // pg_dumpall: every database it connected to but the templates. Checks that name no
        // database run in the first user database, or in postgres when there is none.
        let databases: Vec<String> = filter
            .as_ref()
            .map(|f| {
                f.databases()
                    .iter()
                    .filter(|d| !matches!(d.as_str(), "template0" | "template1"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let main = databases
            .iter()
            .find(|d| *d != "postgres")
            .or(databases.first())
            .cloned()
            .unwrap_or_else(|| "postgres".to_owned());
        notes.push(format!(
            "cluster dump (pg_dumpall): roles and {} databases restored ({})",
            databases.len(),
            databases.join(", ")
        ));
        (main, databases)
    } else {
        let database = filter
            .as_ref()
            .and_then(|f| f.database())
            .unwrap_or(TARGET_DB)
            .to_owned();
        (database.clone(), vec![database])
    };
    if let Some(f) = &filter
        && !f.tablespaces().is_empty()
    {
        notes.push(format!(
            "tablespaces the dump names were mapped to the default one (the sandbox has none of the source's disks): {}",
            f.tablespaces().iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let created: Vec<String> = filter
        .as_ref()
        .map(|f| {
            f.roles()
                .iter()
                .filter(|r| *r != SUPERUSER)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // (A cluster dump brings its roles with it.)
    if !created.is_empty() && !cluster_dump {
        notes.push(format!(
            "roles the dump refers to were created empty: {}",
            created.join(", ")
        ));
    }
    Ok(Restored {
        database,
        databases,
        notes,
    })
}

/// pg_restore (it executes nothing from the dump client-side, so it runs as the caller and can
/// read artifacts the sandbox user cannot), from a file in `args` or from the `feed`.
async fn restore_archive(
    cluster: &PgCluster,
    args: Vec<std::ffi::OsString>,
    feed: Option<Feed<ScriptFilter>>,
    counted: Option<StderrWatch>,
) -> Result<Restored, String> {
    let mut tool = cluster.tool("pg_restore", false);
    let connection = std::mem::take(&mut tool.args);
    tool.args = [
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--exit-on-error",
        "-d",
        TARGET_DB,
    ]
    .map(Into::into)
    .to_vec();
    tool.args.extend(connection);
    if counted.is_some() {
        tool.args.push("--verbose".into());
        tool.watch = counted;
    }
    tool.args.extend(args);
    run_tool(cluster, tool, feed).await?;
    let note = "archive restored with --no-owner --no-privileges --no-tablespaces (roles are not part of a database dump; tablespaces map to the default)";
    Ok(Restored {
        database: TARGET_DB.to_owned(),
        databases: vec![TARGET_DB.to_owned()],
        notes: vec![note.to_owned()],
    })
}

/// The archive's TOC entries (`pg_restore --list`), set as the meter's total, and a watch that
/// counts each item verbose pg_restore says it processed, finished or skipped. `None` without a
/// meter, or when the list cannot be had (the restore then runs as it would undrawn).
async fn count_items(
    cluster: &PgCluster,
    archive: &std::ffi::OsStr,
    meter: Option<&Arc<Meter>>,
) -> Option<StderrWatch> {
    let meter = meter?;
    let mut list = cluster.tool("pg_restore", false);
    list.args = vec!["--list".into(), archive.to_owned()];
    list.capture_stdout = true;
    let out = cluster.sandbox().run(list, None).await.ok()?;
    if !out.success() {
        return None;
    }
    meter.expect_items(toc_entries(&String::from_utf8_lossy(&out.stdout)));
    let meter = meter.clone();
    // Pieces arrive as they were read: a line may span two. An item is counted once, whichever
    // lines name it (a parallel restore launches, then finishes it).
    let state = std::sync::Mutex::new((Vec::<u8>::new(), std::collections::HashSet::<u32>::new()));
    Some(StderrWatch(Arc::new(move |piece: &[u8]| {
        let Ok(mut guard) = state.lock() else { return };
        let (line, seen) = &mut *guard;
        for &b in piece {
            if b != b'\n' {
                // A line longer than this says nothing we count.
                if line.len() < 512 {
                    line.push(b);
                }
                continue;
            }
            if let Some(item) = item_of(line)
                && seen.insert(item)
            {
                meter.add(1);
            }
            line.clear();
        }
    })))
}

/// How many entries `pg_restore --list` says the archive's TOC has: its header's "TOC Entries: N"
/// (which counts the entries the list itself leaves out, such as ENCODING), else the listed lines.
fn toc_entries(list: &str) -> u64 {
    list.lines()
        .find_map(|l| l.split("TOC Entries:").nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| {
            list.lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
                .count() as u64
        })
}

/// The TOC item a verbose pg_restore line says it processed, launched, finished or skipped.
fn item_of(line: &[u8]) -> Option<u32> {
    let line = String::from_utf8_lossy(line);
    let said = line.strip_prefix("pg_restore: ").unwrap_or(&line);
    let rest = [
        "processing item ",
        "launching item ",
        "finished item ",
        "processing missed item ",
        "skipping item ",
    ]
    .iter()
    .find_map(|p| said.strip_prefix(p))?;
    rest.split_whitespace().next()?.parse().ok()
}

impl LineFilter for ScriptFilter {
    fn prologue(&self) -> Vec<u8> {
        ScriptFilter::prologue(self)
    }

    fn filter(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.feed(line, out)
            .map_err(|refused| format!("script refused at {refused}"))
    }
}

/// Runs a restore tool in the sandbox, feeding its stdin when asked; returns the filter (it
/// knows where a plain script `\connect`ed to). `Err` is the failure reason.
async fn run_tool(
    cluster: &PgCluster,
    tool: Tool,
    feed: Option<Feed<ScriptFilter>>,
) -> Result<Option<ScriptFilter>, String> {
    let name = tool.name.clone();
    let (rx, feeder) = match feed {
        Some(feed) => {
            let (rx, feeder) = start_feed(feed);
            (Some(rx), Some(feeder))
        }
        None => (None, None),
    };
    let out = cluster.sandbox().run(tool, rx).await;
    let filter_back = match feeder {
        Some(f) => f.await.ok().flatten(),
        None => None,
    };
    let out = out?;
    if !out.success() {
        return Err(out.failure(&name));
    }
    Ok(filter_back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_lines_name_the_items_done() {
        assert_eq!(
            item_of(b"pg_restore: processing item 215 TABLE public orders"),
            Some(215)
        );
        assert_eq!(
            item_of(b"pg_restore: finished item 3345 TABLE DATA orders"),
            Some(3345)
        );
        assert_eq!(item_of(b"pg_restore: launching item 7 INDEX x"), Some(7));
        assert_eq!(
            item_of(b"pg_restore: creating TABLE \"public.orders\""),
            None
        );
        assert_eq!(item_of(b"pg_restore: error: could not execute query"), None);
        assert_eq!(item_of(b"pg_restore: processing item x"), None);
    }

    #[test]
    fn the_toc_size_comes_from_the_list_header() {
        let list = ";\n; Archive created at 2026-12-06\n;     TOC Entries: 16\n;\n215; 1259 16385 TABLE public orders postgres\n";
        assert_eq!(toc_entries(list), 16);
        assert_eq!(
            toc_entries("215; 1259 16385 TABLE public orders postgres\n;comment\n"),
            1
        );
    }
}
