//! Plain-text tables for `status`, `stats` and `stats --watch`: by default
//! they fit an 80-column terminal (fewer columns, long names shortened);
//! `-o wide` shows every column in full.

/// How many columns a table shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Width {
    /// The columns an operator looks at first, within [`FIT`] characters.
    #[default]
    Fit,
    /// Every column, nothing shortened (`-o wide`).
    Wide,
}

/// The width a default table keeps within: a terminal's classic 80 columns.
pub const FIT: usize = 80;

/// The narrowest a shortened column gets: below that a name says nothing.
const SHORTEST: usize = 12;

pub(crate) fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// The width of each column: its longest cell.
fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn render(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// [`render`], with column `shrink` (a name) shortened in the middle where
/// the table would be wider than [`FIT`]; `Width::Wide` shortens nothing.
/// The middle goes because names differ at their ends (a Kubernetes pod's
/// namespace at the start, its generated suffix at the end).
pub(crate) fn render_fitting(rows: &[Vec<String>], width: Width, shrink: usize) -> String {
    let widths = widths(rows);
    let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    let Some(&current) = widths.get(shrink) else {
        return render(rows);
    };
    if width == Width::Wide || total <= FIT || current <= SHORTEST {
        return render(rows);
    }
    let keep = current.saturating_sub(total - FIT).max(SHORTEST);
    let shortened: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(cell) = r.get_mut(shrink) {
                *cell = shorten_middle(cell, keep);
            }
            r
        })
        .collect();
    render(&shortened)
}

/// `text` in at most `max` characters, its middle replaced by `…`.
pub(crate) fn shorten_middle(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max || max < 3 {
        return text.to_string();
    }
    let tail = (max - 1) / 2;
    let head = max - 1 - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// `text` with lines longer than [`FIT`] broken between words, the
/// continuations indented (a word longer than the width stays whole);
/// `Width::Wide` leaves it as it is.
pub(crate) fn wrap(text: &str, width: Width) -> String {
    if width == Width::Wide {
        return text.to_string();
    }
    let mut out = String::new();
    for line in text.lines() {
        let mut current = String::new();
        for word in line.split(' ') {
            let fits = current.chars().count() + 1 + word.chars().count() <= FIT;
            if !current.is_empty() && !fits {
                out += &current;
                out.push('\n');
                current = " ".to_string();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current += word;
        }
        out += &current;
        out.push('\n');
    }
    out
}

/// The widest line of `text`, in characters.
pub fn widest_line(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = render(&[row(["A", "BBB"]), row(["CCCC", "D"])]);
        assert_eq!(t, "A     BBB\nCCCC  D\n");
    }

    #[test]
    fn prose_wraps_between_words() {
        let line = "word ".repeat(30);
        let wrapped = wrap(line.trim_end(), Width::Fit);
        assert!(widest_line(&wrapped) <= FIT, "{wrapped}");
        assert!(
            wrapped.lines().skip(1).all(|l| l.starts_with("  word")),
            "{wrapped}"
        );
        assert_eq!(wrapped.split_whitespace().count(), 30);
        assert_eq!(wrap("short\n", Width::Fit), "short\n");
        assert_eq!(wrap(&line, Width::Wide), line);
    }

    #[test]
    fn names_shorten_in_the_middle() {
        assert_eq!(shorten_middle("abcdefghij", 7), "abc…hij");
        assert_eq!(shorten_middle("abcdefghij", 6), "abc…ij");
        assert_eq!(shorten_middle("abc", 7), "abc");
    }

    #[test]
    fn a_wide_name_column_is_shortened_to_fit() {
        let long = format!("kube-system/{}-7d4b9c8f6-x2x9z", "a".repeat(60));
        let rows = vec![
            row(["POD", "IPV4", "ENDPOINT"]),
            row([&long, "10.244.1.17", "ready"]),
        ];
        let fit = render_fitting(&rows, Width::Fit, 0);
        assert_eq!(widest_line(&fit), FIT, "{fit}");
        assert!(
            fit.contains("kube-system/") && fit.contains("x2x9z"),
            "{fit}"
        );
        let wide = render_fitting(&rows, Width::Wide, 0);
        assert!(wide.contains(&long), "{wide}");
        // A table that fits is left as it is.
        let short = vec![row(["POD", "IPV4"]), row(["web", "10.0.0.2"])];
        assert_eq!(render_fitting(&short, Width::Fit, 0), render(&short));
    }
}
