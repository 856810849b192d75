//! The line filter a plain SQL dump passes through on its way to `psql`.
//!
//! A plain dump is a psql script, and psql scripts can run shell commands (`\!`), write files
//! (`\o`, `\w`) and more. A backup is hostile input, so the filter:
//! - puts psql in *restricted* mode (`\restrict KEY`, psql ≥ 13.22/14.19/15.14/16.10/17.6) with a
//!   random key the dump cannot know: psql then refuses every meta-command, wherever it appears on a
//!   line. The dump's own `\restrict`/`\unrestrict` lines are dropped (it does not hold our key).
//! - lets through exactly one meta-command, `\connect DB` (pg_dump writes it for `--create` dumps),
//!   on a line of its own with no further backslash, by lifting the restriction around that line;
//! - refuses any other line that starts with a backslash outside COPY data, with a reason;
//! - creates, just before the statement that needs them, the roles named by `OWNER TO`, `GRANT …
//!   TO`, `REVOKE … FROM` and `SET SESSION AUTHORIZATION`: roles live outside a database dump
//!   (`pg_dumpall --globals-only`), and a missing role is not a fault of the backup.
//!
//! - makes a cluster dump (`pg_dumpall`) restorable into a fresh server: `CREATE ROLE r;` of a
//!   role that exists already (the bootstrap superuser, or one created above) becomes a no-op
//!   instead of the error "role already exists", and every database `\connect`ed to is recorded
//!   (the checks then look at each one);
//! - maps tablespaces away: a sandbox has none of the source's disks, and a missing tablespace
//!   is not a fault of the backup. `SET default_tablespace = x` becomes `''`, `CREATE/ALTER
//!   TABLESPACE` lines are dropped, and `TABLESPACE = x` leaves `CREATE DATABASE`; each
//!   tablespace mapped is recorded for the report.
//!
//! COPY data (between `COPY … FROM stdin;` and `\.`) passes through untouched and unparsed.
//! Known limit: a line inside a multi-line statement (a function body) that *starts* with
//! `GRANT`/`REVOKE`/`ALTER … OWNER TO` gets a role-creating statement inserted before it.

use std::collections::BTreeSet;

#[derive(Debug)]
pub struct ScriptFilter {
    /// Our `\restrict` key; `None` when the psql in use predates restricted mode.
    key: Option<String>,
    /// Random dollar-quote tag for the role-creating DO blocks, so no role name can close it.
    tag: String,
    /// Inside COPY data: lines are data, not SQL, until a line `\.`.
    in_copy: bool,
    /// Roles that exist in the sandbox (bootstrap ones) or that we already created.
    roles: BTreeSet<String>,
    /// The database of the last `\connect`, where the restored data ends up.
    database: Option<String>,
    /// Every database `\connect`ed to, in order of first appearance.
    databases: Vec<String>,
    /// The header said "PostgreSQL database cluster dump" (pg_dumpall).
    cluster: bool,
    /// Tablespaces the dump named, mapped to the default one.
    tablespaces: BTreeSet<String>,
    line: u64,
}

/// A line the filter refuses; the verification fails in `restore` with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ScriptRefused {
    pub line: u64,
    pub reason: String,
}

impl ScriptFilter {
    /// `key`: random alphanumerics when psql supports `\restrict`, else `None`. `nonce`: random
    /// alphanumerics for dollar-quote tags. `existing_roles`: roles the sandbox already has.
    pub fn new(key: Option<String>, nonce: &str, existing_roles: &[&str]) -> ScriptFilter {
        ScriptFilter {
            key,
            tag: format!("$rehearse_{nonce}$"),
            in_copy: false,
            roles: existing_roles.iter().map(|r| (*r).to_owned()).collect(),
            database: None,
            databases: Vec::new(),
            cluster: false,
            tablespaces: BTreeSet::new(),
            line: 0,
        }
    }

    /// Whether the script is a cluster dump (pg_dumpall): roles, then every database.
    pub fn is_cluster_dump(&self) -> bool {
        self.cluster
    }

    /// Every database the script `\connect`ed to, in order.
    pub fn databases(&self) -> &[String] {
        &self.databases
    }

    /// Tablespaces the dump named, restored into the default one instead.
    pub fn tablespaces(&self) -> &BTreeSet<String> {
        &self.tablespaces
    }

    /// What goes to psql before the dump.
    pub fn prologue(&self) -> Vec<u8> {
        match &self.key {
            Some(key) => format!("\\restrict {key}\n").into_bytes(),
            None => Vec::new(),
        }
    }

    /// The database the last `\connect` switched to, if any.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// Roles the filter created (for the report).
    pub fn roles(&self) -> &BTreeSet<String> {
        &self.roles
    }

    /// Filters one line (with or without its `\n`), appending what psql should read to `out`.
    pub fn feed(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ScriptRefused> {
        self.line += 1;
        let body = strip_eol(line);
        if self.in_copy {
            if body == b"\\." {
                self.in_copy = false;
            }
            push_line(out, line);
            return Ok(());
        }
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim_start();
        if trimmed.starts_with('\\') {
            return self.meta(trimmed, out);
        }
        if self.line < 10 && trimmed.starts_with("-- PostgreSQL database cluster dump") {
            self.cluster = true;
        }
        let tokens = tokenize(&text);
        if is_copy_from_stdin(&tokens) {
            self.in_copy = true;
        }
        if let Some(rewritten) = self.rewrite(&tokens) {
            out.extend_from_slice(rewritten.as_bytes());
            out.push(b'\n');
            return Ok(());
        }
        for role in roles_named(&tokens) {
            if !self.roles.contains(&role) && !is_predefined(&role) {
                out.extend_from_slice(
                    format!("DO {tag} BEGIN CREATE ROLE {q}; EXCEPTION WHEN duplicate_object THEN NULL; END {tag};\n", tag = self.tag, q = quote_ident(&role))
                        .as_bytes(),
                );
                self.roles.insert(role);
            }
        }
        push_line(out, line);
        Ok(())
    }

    /// A replacement for a one-line statement the sandbox cannot take as written, if it is one.
    fn rewrite(&mut self, tokens: &[Token]) -> Option<String> {
        let kw = |i: usize, k: &str| tokens.get(i).is_some_and(|t| t.is_kw(k));
        let ends = tokens.last() == Some(&Token::Punct(';'));
        // CREATE ROLE r;  (pg_dumpall: the attributes follow in ALTER ROLE)
        if kw(0, "CREATE") && kw(1, "ROLE") && tokens.len() == 4 && ends {
            let role = tokens[2].role()?;
            self.roles.insert(role.clone());
            return Some(format!(
                "DO {tag} BEGIN CREATE ROLE {q}; EXCEPTION WHEN duplicate_object THEN NULL; END {tag};",
                tag = self.tag,
                q = quote_ident(&role)
            ));
        }
        // SET default_tablespace = x;
        if kw(0, "SET") && kw(1, "default_tablespace") && ends {
            let name = match tokens.get(3)? {
                Token::Word(w) => w.clone(),
                Token::Quoted(q) | Token::Str(q) => q.clone(),
                Token::Punct(_) => return None,
            };
            if name.is_empty() {
                return None;
            }
            self.tablespaces.insert(name);
            return Some("SET default_tablespace = '';".to_owned());
        }
        // CREATE TABLESPACE x OWNER o LOCATION '/disk';  ALTER TABLESPACE x …;
        if (kw(0, "CREATE") || kw(0, "ALTER")) && kw(1, "TABLESPACE") {
            if let Some(name) = tokens.get(2).and_then(Token::role) {
                self.tablespaces.insert(name);
            }
            return Some("-- (tablespace mapped to the default by rehearse)".to_owned());
        }
        // CREATE DATABASE d WITH … TABLESPACE = x …;
        if kw(0, "CREATE") && kw(1, "DATABASE") && ends {
            let at = tokens.iter().position(|t| t.is_kw("TABLESPACE"))?;
            let eq = usize::from(tokens.get(at + 1) == Some(&Token::Punct('=')));
            let name = tokens.get(at + 1 + eq).and_then(Token::role)?;
            self.tablespaces.insert(name);
            let mut kept: Vec<Token> = tokens[..at].to_vec();
            kept.extend_from_slice(&tokens[at + 2 + eq..]);
            return Some(render(&kept));
        }
        None
    }

    fn meta(&mut self, trimmed: &str, out: &mut Vec<u8>) -> Result<(), ScriptRefused> {
        let mut words = trimmed.splitn(2, char::is_whitespace);
        let command = words.next().unwrap_or_default();
        let args = words.next().unwrap_or_default().trim();
        match command {
            // The dump's own restriction: ours replaces it.
            "\\restrict" | "\\unrestrict" => Ok(()),
            "\\connect" | "\\c" => {
                if args.contains('\\') {
                    return Err(self.refuse("\\connect with a backslash in its arguments"));
                }
                let database = connect_target(args)
                    .ok_or_else(|| self.refuse("\\connect without a database name"))?;
                match &self.key {
                    Some(key) => out.extend_from_slice(
                        format!("\\unrestrict {key}\n\\connect {args}\n\\restrict {key}\n")
                            .as_bytes(),
                    ),
                    None => out.extend_from_slice(format!("\\connect {args}\n").as_bytes()),
                }
                if !self.databases.contains(&database) {
                    self.databases.push(database.clone());
                }
                self.database = Some(database);
                Ok(())
            }
            other => Err(self.refuse(&format!(
                "psql meta-command {other} (pg_dump never writes it; refused as unsafe)"
            ))),
        }
    }

    fn refuse(&self, reason: &str) -> ScriptRefused {
        ScriptRefused {
            line: self.line,
            reason: reason.to_owned(),
        }
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    if !line.ends_with(b"\n") {
        out.push(b'\n');
    }
}

fn is_predefined(role: &str) -> bool {
    role.starts_with("pg_")
}

/// Tokens back to SQL text (quoting kept; spacing normalised).
fn render(tokens: &[Token]) -> String {
    let mut out = String::new();
    for t in tokens {
        let piece = match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => quote_ident(q),
            Token::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Token::Punct(c) => c.to_string(),
        };
        if !out.is_empty() && !matches!(t, Token::Punct(';' | ',' | ')')) && !out.ends_with('(') {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    out
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `\connect` arguments as pg_dump writes them: `-reuse-previous=on "dbname='shop'"`, or a bare
/// name. Returns the database name.
fn connect_target(args: &str) -> Option<String> {
    let arg = args
        .split_whitespace()
        .find(|a| !a.starts_with("-reuse-previous"))?;
    let arg = arg.trim_matches('"');
    let name = match arg.strip_prefix("dbname=") {
        Some(value) => value.trim_matches('\'').replace("''", "'"),
        None => arg.to_owned(),
    };
    (!name.is_empty()).then_some(name)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted word (keyword or identifier), as written.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// A single-quoted string, unescaped.
    Str(String),
    Punct(char),
}

impl Token {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// The role this token names, if it names one.
    fn role(&self) -> Option<String> {
        match self {
            Token::Word(w) => {
                let lower = w.to_ascii_lowercase();
                let keyword = matches!(
                    lower.as_str(),
                    "public"
                        | "current_user"
                        | "session_user"
                        | "current_role"
                        | "group"
                        | "none"
                        | "default"
                );
                (!keyword).then_some(lower)
            }
            Token::Quoted(q) | Token::Str(q) => Some(q.clone()),
            Token::Punct(_) => None,
        }
    }
}

/// A small SQL tokenizer: enough to find keywords and role names on one line.
fn tokenize(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '-' && line_rest_starts_with(&chars, "--") {
            break;
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            while let Some(ch) = chars.next() {
                if ch == c {
                    if chars.peek() == Some(&c) {
                        chars.next();
                        s.push(c);
                    } else {
                        break;
                    }
                } else {
                    s.push(ch);
                }
            }
            tokens.push(if c == '"' {
                Token::Quoted(s)
            } else {
                Token::Str(s)
            });
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_alphanumeric() || ch == '_' || ch == '$' || ch == '.' {
                    w.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(Token::Word(w));
        } else {
            tokens.push(Token::Punct(c));
            chars.next();
        }
    }
    tokens
}

fn line_rest_starts_with(chars: &std::iter::Peekable<std::str::Chars<'_>>, prefix: &str) -> bool {
    chars.clone().take(prefix.len()).eq(prefix.chars())
}

fn is_copy_from_stdin(tokens: &[Token]) -> bool {
    let n = tokens.len();
    tokens.first().is_some_and(|t| t.is_kw("COPY"))
        && n >= 3
        && tokens[n - 1] == Token::Punct(';')
        && tokens[n - 2].is_kw("stdin")
        && tokens[n - 3].is_kw("FROM")
}

/// The roles a single-line statement needs to exist.
fn roles_named(tokens: &[Token]) -> Vec<String> {
    let Some(first) = tokens.first() else {
        return Vec::new();
    };
    let mut roles = Vec::new();
    let position = |kw: &str| tokens.iter().rposition(|t| t.is_kw(kw));
    if first.is_kw("ALTER") {
        if let Some(i) = tokens
            .windows(2)
            .rposition(|w| w[0].is_kw("OWNER") && w[1].is_kw("TO"))
        {
            roles.extend(tokens.get(i + 2).and_then(Token::role));
        }
        if tokens.get(1).is_some_and(|t| t.is_kw("DEFAULT"))
            && let Some(i) = tokens
                .windows(2)
                .position(|w| w[0].is_kw("FOR") && (w[1].is_kw("ROLE") || w[1].is_kw("USER")))
        {
            roles.extend(role_list(&tokens[i + 2..]));
        }
    }
    let grant_or_revoke = first.is_kw("GRANT")
        || first.is_kw("REVOKE")
        || (first.is_kw("ALTER") && tokens.get(1).is_some_and(|t| t.is_kw("DEFAULT")));
    if grant_or_revoke {
        let grant_at = tokens
            .iter()
            .position(|t| t.is_kw("GRANT") || t.is_kw("REVOKE"));
        let is_grant = grant_at.is_some_and(|i| tokens[i].is_kw("GRANT"));
        if let Some(i) = position(if is_grant { "TO" } else { "FROM" }) {
            roles.extend(role_list(&tokens[i + 1..]));
        }
        if let Some(i) = tokens
            .windows(2)
            .position(|w| w[0].is_kw("GRANTED") && w[1].is_kw("BY"))
        {
            roles.extend(tokens.get(i + 2).and_then(Token::role));
        }
    }
    if first.is_kw("SET") {
        let role_at = if tokens.get(1).is_some_and(|t| t.is_kw("SESSION"))
            && tokens.get(2).is_some_and(|t| t.is_kw("AUTHORIZATION"))
        {
            Some(3)
        } else if tokens.get(1).is_some_and(|t| t.is_kw("ROLE")) {
            Some(2)
        } else {
            None
        };
        roles.extend(role_at.and_then(|i| tokens.get(i)).and_then(Token::role));
    }
    roles
}

/// `a, "B", c` up to the first token that is not a role or a comma.
fn role_list(tokens: &[Token]) -> Vec<String> {
    let stop = [
        "WITH", "GRANTED", "CASCADE", "RESTRICT", "IN", "GRANT", "REVOKE",
    ];
    let mut roles = Vec::new();
    for t in tokens {
        match t {
            Token::Punct(',') => {}
            Token::Punct(_) => break,
            t if stop.iter().any(|kw| t.is_kw(kw)) => break,
            t if t.is_kw("GROUP") => {}
            t => roles.extend(t.role()),
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filter() -> ScriptFilter {
        ScriptFilter::new(Some("K3Y".into()), "n0nce", &["postgres"])
    }

    fn run(f: &mut ScriptFilter, script: &str) -> Result<String, ScriptRefused> {
        let mut out = Vec::new();
        for line in script.split_inclusive('\n') {
            f.feed(line.as_bytes(), &mut out)?;
        }
        Ok(String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn a_cluster_dump_recreates_existing_roles_harmlessly_and_records_its_databases() {
        let mut f = filter();
        let out = run(
            &mut f,
            "--\n-- PostgreSQL database cluster dump\n--\nCREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER LOGIN;\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\n\\connect template1\n\\connect -reuse-previous=on \"dbname='appdb'\"\nCREATE TABLE t (id int);\n\\connect postgres\n",
        )
        .expect("accepted");
        assert!(f.is_cluster_dump());
        assert_eq!(f.databases(), ["template1", "appdb", "postgres"]);
        assert!(!out.contains("\nCREATE ROLE postgres;"), "{out}");
        assert!(
            out.contains(
                "BEGIN CREATE ROLE \"postgres\"; EXCEPTION WHEN duplicate_object THEN NULL;"
            ),
            "{out}"
        );
        assert!(out.contains("ALTER ROLE postgres WITH SUPERUSER;"), "{out}");
        let mut plain = filter();
        run(&mut plain, "--\n-- PostgreSQL database dump\n--\n").expect("ok");
        assert!(!plain.is_cluster_dump());
    }

    #[test]
    fn tablespaces_are_mapped_to_the_default() {
        let mut f = filter();
        let out = run(
            &mut f,
            "CREATE TABLESPACE fastssd OWNER postgres LOCATION '/mnt/ssd';\nCREATE DATABASE appdb WITH TEMPLATE = template0 ENCODING = 'UTF8' TABLESPACE = fastssd;\nSET default_tablespace = fastssd;\nCREATE TABLE t (id int);\nSET default_tablespace = '';\n",
        )
        .expect("accepted");
        assert!(!out.contains("LOCATION"), "{out}");
        assert!(!out.contains("fastssd"), "{out}");
        assert!(
            out.contains("CREATE DATABASE appdb WITH TEMPLATE = template0 ENCODING = 'UTF8';"),
            "{out}"
        );
        assert_eq!(
            out.matches("SET default_tablespace = '';").count(),
            2,
            "{out}"
        );
        assert_eq!(f.tablespaces().iter().collect::<Vec<_>>(), ["fastssd"]);
    }

    #[test]
    fn roles_are_created_once_before_first_use() {
        let mut f = filter();
        let out = run(
            &mut f,
            "CREATE TABLE public.orders (id int);\nALTER TABLE public.orders OWNER TO shop;\nALTER TABLE public.x OWNER TO shop;\nGRANT SELECT ON TABLE public.orders TO reporting, \"Audit Team\";\nREVOKE ALL ON SCHEMA public FROM PUBLIC;\n",
        )
        .expect("accepted");
        let creates: Vec<&str> = out.lines().filter(|l| l.starts_with("DO ")).collect();
        assert_eq!(creates.len(), 3, "{out}");
        assert!(creates[0].contains("CREATE ROLE \"shop\""));
        assert!(creates[1].contains("CREATE ROLE \"reporting\""));
        assert!(creates[2].contains("CREATE ROLE \"Audit Team\""));
        let shop_create = out.find("CREATE ROLE \"shop\"").expect("created");
        assert!(shop_create < out.find("OWNER TO shop").expect("kept"));
        assert!(creates.iter().all(|c| c.contains("$rehearse_n0nce$")));
    }

    #[test]
    fn bootstrap_public_and_predefined_roles_are_not_created() {
        let mut f = filter();
        let out = run(&mut f, "ALTER SCHEMA public OWNER TO postgres;\nGRANT pg_read_all_data TO PUBLIC;\nGRANT ALL ON TABLE t TO CURRENT_USER;\n").expect("ok");
        assert!(!out.contains("CREATE ROLE"), "{out}");
    }

    #[test]
    fn session_authorization_and_default_privileges() {
        let mut f = filter();
        let out = run(
            &mut f,
            "SET SESSION AUTHORIZATION 'loader';\nALTER DEFAULT PRIVILEGES FOR ROLE admin IN SCHEMA public GRANT SELECT ON TABLES TO readers;\nREVOKE ALL ON TABLE t FROM old_role CASCADE;\nGRANT SELECT ON t TO a WITH GRANT OPTION;\n",
        )
        .expect("ok");
        for role in ["loader", "admin", "readers", "old_role", "a"] {
            assert!(
                out.contains(&format!("CREATE ROLE \"{role}\"")),
                "{role}: {out}"
            );
        }
        assert!(!out.contains("CREATE ROLE \"public\""));
    }

    #[test]
    fn copy_data_is_untouched() {
        let mut f = filter();
        let script = "COPY public.notes (id, body) FROM stdin;\n1\tALTER TABLE x OWNER TO evil;\n2\t\\! rm -rf /\n\\.\nGRANT SELECT ON t TO after_copy;\n";
        let out = run(&mut f, script).expect("data lines are data");
        assert!(!out.contains("CREATE ROLE \"evil\""));
        assert!(out.contains("2\t\\! rm -rf /\n"));
        assert!(out.contains("CREATE ROLE \"after_copy\""));
    }

    #[test]
    fn restrict_wraps_and_dump_restrict_lines_are_dropped() {
        let mut f = filter();
        assert_eq!(f.prologue(), b"\\restrict K3Y\n");
        let out = run(
            &mut f,
            "\\restrict theirs\nSELECT 1;\n\\unrestrict theirs\n",
        )
        .expect("ok");
        assert_eq!(out, "SELECT 1;\n");
    }

    #[test]
    fn connect_is_let_through_and_tracked() {
        let mut f = filter();
        let out = run(
            &mut f,
            "CREATE DATABASE shop;\n\\connect -reuse-previous=on \"dbname='shop'\"\n",
        )
        .expect("ok");
        assert!(
            out.contains(
                "\\unrestrict K3Y\n\\connect -reuse-previous=on \"dbname='shop'\"\n\\restrict K3Y\n"
            ),
            "{out}"
        );
        assert_eq!(f.database(), Some("shop"));
        let mut f = filter();
        run(&mut f, "\\c plain\n").expect("ok");
        assert_eq!(f.database(), Some("plain"));
    }

    #[test]
    fn other_meta_commands_are_refused_with_the_line() {
        for bad in [
            "\\! touch /tmp/pwned\n",
            "\\o /etc/passwd\n",
            "  \\set ON_ERROR_STOP off\n",
            "\\connect db \\! id\n",
            "\\connect\n",
        ] {
            let mut f = filter();
            let e = run(&mut f, &format!("SELECT 1;\n{bad}")).expect_err(bad);
            assert_eq!(e.line, 2, "{bad}");
        }
    }

    #[test]
    fn without_restrict_support_connect_passes_plainly() {
        let mut f = ScriptFilter::new(None, "n", &["postgres"]);
        assert!(f.prologue().is_empty());
        let out = run(&mut f, "\\connect shop\n").expect("ok");
        assert_eq!(out, "\\connect shop\n");
    }

    proptest! {
        /// Any line: the filter never panics, and every non-refused line reaches psql intact.
        #[test]
        fn lines_pass_intact(line in "[^\n]{0,200}") {
            let mut f = filter();
            let mut out = Vec::new();
            if f.feed(format!("{line}\n").as_bytes(), &mut out).is_ok() && !line.trim_start().starts_with('\\') {
                let text = String::from_utf8(out).expect("utf8");
                let want = format!("{line}\n");
                prop_assert!(text.ends_with(&want));
            }
        }
    }
}
