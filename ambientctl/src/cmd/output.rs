//! How commands print: aligned tables by default (as istioctl and kubectl do), or the same
//! data as JSON or YAML with `-o`.

use ambient_controller::source::yaml;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Columns padded to their widest cell, separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints `data` as `format` asks; `render` makes the table.
pub fn print<T: Serialize>(format: Format, data: &T, render: impl FnOnce(&T) -> String) {
    match format {
        Format::Table => print!("{}", render(data)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(data).expect("serializable")
        ),
        Format::Yaml => print!("{}", yaml::to_string(data).expect("serializable")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(
            &["NAME", "IP"],
            &[
                vec!["a".into(), "10.0.0.1".into()],
                vec!["longer".into(), "x".into()],
            ],
        );
        assert_eq!(t, "NAME    IP\na       10.0.0.1\nlonger  x\n");
    }
}
