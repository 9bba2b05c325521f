//! How a subcommand prints what it found: a table or text for people, JSON or YAML for tools.

use serde::Serialize;

/// `-o/--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Tables and text.
    #[default]
    Text,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

/// `value` in `format`; `text` renders it for people.
pub fn render<T: Serialize>(
    format: Output,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    Ok(match format {
        Output::Text => text(value),
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_saphyr::to_string(value)?,
    })
}

/// A byte count for people: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// An age for people, as kubectl prints them: `45s`, `12m`, `3h`, `2d`.
pub fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            out.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_kubectl() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(age(-3), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 86_400), "3d");
    }

    #[test]
    fn table_columns_align() {
        let t = table(
            &["ID", "BYTES"],
            &[
                vec!["7".into(), "1.0 KiB".into()],
                vec!["12".into(), "3 B".into()],
            ],
        );
        assert_eq!(t, "ID  BYTES\n7   1.0 KiB\n12  3 B\n");
    }

    #[derive(Serialize)]
    struct Row {
        id: u64,
    }

    #[test]
    fn json_and_yaml_carry_the_fields() {
        let row = Row { id: 7 };
        let json = render(Output::Json, &row, |_| String::new()).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap()["id"],
            7
        );
        let yaml = render(Output::Yaml, &row, |_| String::new()).unwrap();
        assert_eq!(yaml.trim(), "id: 7");
        assert_eq!(
            render(Output::Text, &row, |r| format!("id {}", r.id)).unwrap(),
            "id 7"
        );
    }
}
