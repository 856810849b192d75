//! Telling "the backup is bad" from "we could not verify it" in what a tool said.
//!
//! A restore tool's error is a verdict on the backup only when the backup caused it. Some errors
//! name the sandbox instead: an extension or locale the image lacks, a full disk, a memory limit,
//! credentials the storage refused. [`environment`] recognises those by the server's and the
//! tools' own wording and says what to fix; the pipeline then records `error` (could not verify),
//! never `failed`. Everything it does not recognise stays a failure of the backup, so a hostile
//! dump that provokes, say, a permission error inside the sandbox is still `failed`.

/// What the environment lacked, and what to do about it: a sentence for the report.
pub fn environment(said: &str) -> Option<String> {
    if let Some(name) = missing_extension(said) {
        return Some(format!(
            "the sandbox has no extension {name} (use an image that has it: [sandbox] image)"
        ));
    }
    if let Some(locale) = quoted_after(said, "invalid locale name: ")
        .or_else(|| quoted_after(said, "invalid locale name "))
    {
        return Some(format!(
            "the sandbox has no locale {locale} (use an image that has it: [sandbox] image)"
        ));
    }
    if said.contains("No space left on device") || said.contains("could not extend file") {
        return Some(
            "the sandbox ran out of disk space (raise [sandbox] disk, or free the worker's work dir)"
                .to_owned(),
        );
    }
    if said.contains("Cannot allocate memory") || said.contains("OOM-killed") {
        return Some("the sandbox ran out of memory (raise [sandbox] memory)".to_owned());
    }
    if said.contains("refused the credentials") || said.contains("the credentials lack permission")
    {
        return Some(format!(
            "the storage refused this worker's credentials: {}",
            first_line(said)
        ));
    }
    None
}

/// `postgis` from PostgreSQL's two wordings of a missing extension:
/// `could not open extension control file ".../postgis.control"` (≤ 15) and
/// `extension "postgis" is not available` (16+).
fn missing_extension(said: &str) -> Option<String> {
    if let Some(path) = quoted_after(said, "could not open extension control file ") {
        let file = path.rsplit('/').next()?;
        return file.strip_suffix(".control").map(str::to_owned);
    }
    let at = said.find("\" is not available")?;
    let before = &said[..at];
    let start = before.rfind("extension \"")? + "extension \"".len();
    Some(before[start..].to_owned())
}

/// The text between the quotes right after `prefix`: `"x"` → `x`.
fn quoted_after(said: &str, prefix: &str) -> Option<String> {
    let rest = &said[said.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

fn first_line(said: &str) -> &str {
    said.lines().next().unwrap_or(said).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_extensions_in_both_wordings() {
        let pg15 = "psql:<stdin>:25: ERROR:  could not open extension control file \"/usr/share/postgresql/15/extension/postgis.control\": No such file or directory";
        assert_eq!(
            environment(pg15).as_deref(),
            Some(
                "the sandbox has no extension postgis (use an image that has it: [sandbox] image)"
            )
        );
        let pg17 = "ERROR:  extension \"vector\" is not available\nDETAIL:  Could not open extension control file";
        assert!(environment(pg17).is_some_and(|s| s.contains("no extension vector")));
    }

    #[test]
    fn resources_locales_and_credentials() {
        assert!(
            environment(
                "ERROR:  could not extend file \"base/16384/16385\": No space left on device"
            )
            .is_some_and(|s| s.contains("disk"))
        );
        assert!(
            environment("ERROR:  invalid locale name: \"de_DE.UTF-8\"")
                .is_some_and(|s| s.contains("no locale de_DE.UTF-8"))
        );
        assert!(environment("the container was OOM-killed").is_some_and(|s| s.contains("memory")));
        assert!(
            environment("S3 refused the credentials for s3://b/k")
                .is_some_and(|s| s.contains("credentials"))
        );
    }

    #[test]
    fn what_the_backup_caused_is_not_an_environment_fault() {
        for said in [
            "pg_restore: error: could not read from input file: end of file",
            "ERROR:  syntax error at or near \"CRATE\"",
            "ERROR:  could not open file \"/etc/cron.d/x\" for writing: Permission denied",
            "ERROR:  relation \"orders\" does not exist",
            "ERROR 1064 (42000) at line 3: You have an error in your SQL syntax",
            "",
        ] {
            assert_eq!(environment(said), None, "{said}");
        }
    }
}
