//! Keeping the end of a tool's stderr: the last lines are where restore tools say what went wrong.

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of a stream is kept; older bytes are dropped as new ones arrive.
const KEEP: usize = 16 * 1024;

/// Reads a stream to its end, keeping only its last [`KEEP`] bytes (bounded memory whatever a
/// hostile dump makes the tool print).
pub async fn collect(stream: impl AsyncRead + Unpin) -> String {
    collect_watched(stream, None).await
}

/// [`collect`], handing each piece read to `watch` too.
pub async fn collect_watched(
    mut stream: impl AsyncRead + Unpin,
    watch: Option<crate::runtime::StderrWatch>,
) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Some(w) = &watch {
            (w.0)(&buf[..n]);
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    let start = kept.len().saturating_sub(KEEP);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

/// The last `n` non-empty lines joined with " | ", at most 600 characters.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(n)..].join(" | ");
    if joined.chars().count() > 600 {
        format!(
            "…{}",
            joined
                .chars()
                .rev()
                .take(600)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        )
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_skips_blanks() {
        assert_eq!(last_lines("a\n\nb\nc\n\n", 2), "b | c");
        assert_eq!(last_lines("", 3), "");
        assert!(last_lines(&"x".repeat(2000), 1).chars().count() <= 601);
    }

    #[tokio::test]
    async fn collect_keeps_the_end() {
        let data = format!("{}END", "y".repeat(100_000));
        let kept = collect(data.as_bytes()).await;
        assert!(kept.ends_with("END"));
        assert!(kept.len() <= KEEP);
    }
}
