//! Plain-text tables for the CLI's output.

/// Left-aligned columns separated by two spaces, no trailing blanks.
pub(crate) fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, w) in row.as_ref().iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Owned cells from string literals (a header row).
pub(crate) fn strings(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Broker ids as `1,2,3`.
pub(crate) fn ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_end_without_blanks() {
        let rows = vec![strings(&["A", "LONGER", "C"]), strings(&["xyz", "1", ""])];
        assert_eq!(table(&rows), "A    LONGER  C\nxyz  1\n");
        assert_eq!(table::<Vec<String>>(&[]), "");
        assert_eq!(ids(&[3, 1]), "3,1");
    }
}
