//! Reading the result sets the `mariadb`/`mysql` client prints with `--xml`.
//!
//! The batch text mode prints SQL NULL and the string 'NULL' alike; the XML mode marks NULL with
//! `xsi:nil="true"`, so checks can tell them apart. The format is the client's own, small and
//! fixed:
//!
//! ```text
//! <resultset statement="..." xmlns:xsi="...">
//!   <row>
//!     <field name="n">42</field>
//!     <field name="x" xsi:nil="true" />
//!   </row>
//! </resultset>
//! ```
//!
//! Only `<row>` and `<field>` elements are read; text is unescaped (`&lt;` `&gt;` `&amp;`
//! `&quot;` `&apos;` and numeric references).

/// One row: each field's value, `None` for SQL NULL.
pub type Row = Vec<Option<String>>;

/// Every row of every result set, in order. `Err` when the text is not the client's XML.
pub fn rows(xml: &str) -> Result<Vec<Row>, String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<row>") {
        let body_start = start + "<row>".len();
        let end = rest[body_start..]
            .find("</row>")
            .ok_or("unterminated <row> in the client's XML output")?;
        out.push(fields(&rest[body_start..body_start + end])?);
        rest = &rest[body_start + end + "</row>".len()..];
    }
    Ok(out)
}

/// The first field of the first row: `None` when there is no row, `Some(None)` for NULL.
pub fn first_value(xml: &str) -> Result<Option<Option<String>>, String> {
    Ok(rows(xml)?
        .into_iter()
        .next()
        .map(|row| row.into_iter().next().flatten()))
}

fn fields(mut body: &str) -> Result<Row, String> {
    let mut row = Vec::new();
    while let Some(open) = body.find("<field") {
        let tag_end = body[open..]
            .find('>')
            .ok_or("unterminated <field> in the client's XML output")?
            + open;
        let tag = &body[open..=tag_end];
        if tag.ends_with("/>") {
            // <field name="x" xsi:nil="true" /> is NULL; <field name="x" /> an empty string.
            row.push((!tag.contains("xsi:nil=\"true\"")).then(String::new));
            body = &body[tag_end + 1..];
            continue;
        }
        let close = body[tag_end + 1..]
            .find("</field>")
            .ok_or("unterminated <field> in the client's XML output")?
            + tag_end
            + 1;
        row.push(Some(unescape(&body[tag_end + 1..close])?));
        body = &body[close + "</field>".len()..];
    }
    Ok(row)
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..]
            .find(';')
            .ok_or("a bare & in the client's XML output")?
            + amp;
        let entity = &rest[amp + 1..semi];
        let ch = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad character reference &{e};"))?,
            e if e.starts_with('#') => e[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad character reference &{e};"))?,
            e => return Err(format!("unknown entity &{e}; in the client's XML output")),
        };
        out.push(ch);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0"?>

<resultset statement="select 42, null, 'NULL', '', 'a&lt;b &amp; &quot;c&quot;'
" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <row>
	<field name="42">42</field>
	<field name="NULL" xsi:nil="true" />
	<field name="'NULL'">NULL</field>
	<field name="''"></field>
	<field name="x">a&lt;b &amp; &quot;c&quot;</field>
  </row>
</resultset>
"#;

    #[test]
    fn null_is_told_from_the_string_null() {
        let rows = rows(SAMPLE).expect("parses");
        assert_eq!(
            rows,
            vec![vec![
                Some("42".into()),
                None,
                Some("NULL".into()),
                Some(String::new()),
                Some("a<b & \"c\"".into()),
            ]]
        );
        assert_eq!(first_value(SAMPLE), Ok(Some(Some("42".into()))));
    }

    #[test]
    fn empty_results_and_several_sets() {
        let empty =
            "<?xml version=\"1.0\"?>\n<resultset statement=\"select 1 where 0\">\n</resultset>\n";
        assert_eq!(first_value(empty), Ok(None));
        assert_eq!(first_value(""), Ok(None));
        let two = format!("{empty}{SAMPLE}");
        assert_eq!(rows(&two).expect("parses").len(), 1);
        let nil_first = "<row><field name=\"a\" xsi:nil=\"true\" /></row>";
        assert_eq!(first_value(nil_first), Ok(Some(None)));
        let multi = "<row><field name=\"s\">a</field><field name=\"n\">1</field></row>\n<row><field name=\"s\">b</field><field name=\"n\">&#50;</field></row>";
        assert_eq!(
            rows(multi),
            Ok(vec![
                vec![Some("a".into()), Some("1".into())],
                vec![Some("b".into()), Some("2".into())]
            ])
        );
    }

    #[test]
    fn broken_output_is_an_error_not_a_panic() {
        assert!(rows("<row><field name=\"a\">1").is_err());
        assert!(rows("<row><field name=\"a\">&bogus;</field></row>").is_err());
        assert!(rows("<row><field name=\"a\">a & b</field></row>").is_err());
        assert!(rows("<row><field").is_err());
    }
}
