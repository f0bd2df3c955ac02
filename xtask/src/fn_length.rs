//! A test that keeps the product crates' functions within a screen (about
//! 80 lines): a longer one is split into named steps. It reads the sources
//! as text (no parser): comments, strings and character literals are
//! blanked so that only code braces count; `#[cfg(test)]` modules are left
//! out, since their tables of cases read best whole.

/// The crates whose functions must fit, relative to the workspace root.
const PRODUCT_SOURCES: [&str; 4] = [
    "veth-userspace/src",
    "veth-common/src",
    "veth-ebpf/src",
    "veth-cni-protocol/src",
];

/// The most lines a function may have, its signature and braces included.
const MOST_LINES: usize = 80;

/// A function found in a source file.
#[derive(Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// 1-based line of its `fn`.
    pub line: usize,
    pub lines: usize,
}

/// `src` with comments, string and character literals replaced by spaces
/// (newlines kept, so line numbers stay).
fn blank(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        let end = literal_end(&chars, i);
        if end == i {
            out.push(chars[i]);
            i += 1;
        } else {
            for &c in &chars[i..end] {
                out.push(if c == '\n' { '\n' } else { ' ' });
            }
            i = end;
        }
    }
    out
}

/// Where the comment or literal starting at `i` ends (exclusive), or `i`
/// when none starts there.
fn literal_end(chars: &[char], i: usize) -> usize {
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    let find = |from: usize, pattern: &[char]| {
        (from..chars.len())
            .find(|&k| chars[k..].starts_with(pattern))
            .map_or(chars.len(), |k| k + pattern.len())
    };
    let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    match (at(i), at(i + 1)) {
        ('/', '/') => find(i, &['\n']).saturating_sub(1).max(i + 2),
        ('/', '*') => find(i + 2, &['*', '/']),
        ('r', '"' | '#') | ('b', 'r') if !ident_before => raw_string_end(chars, i),
        ('"', _) => string_end(chars, i + 1),
        ('b', '"') if !ident_before => string_end(chars, i + 2),
        ('\'', '\\') => find(i + 2, &['\'']),
        ('\'', _) if at(i + 2) == '\'' => i + 3,
        _ => i,
    }
}

/// The end of a string whose text starts at `i` (after its quote).
fn string_end(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The end of a raw string `r#"…"#` (or `br"…"`) starting at `i`; `i` when
/// it is not one (`r` as a name).
fn raw_string_end(chars: &[char], i: usize) -> usize {
    let mut k = i + if chars[i] == 'b' { 2 } else { 1 };
    let hashes = chars[k..].iter().take_while(|&&c| c == '#').count();
    k += hashes;
    if chars.get(k) != Some(&'"') {
        return i;
    }
    let mut close = vec!['"'];
    close.extend(std::iter::repeat_n('#', hashes));
    (k + 1..chars.len())
        .find(|&j| chars[j..].starts_with(&close))
        .map_or(chars.len(), |j| j + close.len())
}

/// The line (0-based) where the braces opened at or after `start` close,
/// if a `{` comes before a `;` (a body, not a declaration).
fn body_end(lines: &[&str], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut opened = false;
    for (n, line) in lines.iter().enumerate().skip(start) {
        for c in line.chars() {
            match c {
                ';' if !opened => return None,
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' if opened => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Some(n);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// The name of the function a line declares, if it does.
fn declared(line: &str) -> Option<&str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    let qualifiers = ["pub", "const", "async", "unsafe", "extern", "default"];
    let prefix_ok = words[..at].iter().all(|w| {
        qualifiers.contains(w) || w.starts_with("pub(") || w.starts_with('"') || w.ends_with(')')
    });
    let name = words.get(at + 1)?;
    let end = name
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(name.len());
    (prefix_ok && end > 0).then(|| &name[..end])
}

/// Every function with a body in `src`, outside `#[cfg(test)]` modules.
pub fn functions(src: &str) -> Vec<Function> {
    let blanked = blank(src);
    let lines: Vec<&str> = blanked.lines().collect();
    let mut found = Vec::new();
    let mut n = 0;
    while n < lines.len() {
        let line = lines[n].trim();
        let test_module = line == "#[cfg(test)]"
            && lines.get(n + 1).is_some_and(|l| {
                let l = l.trim();
                l.starts_with("mod ") || l.starts_with("pub mod ")
            });
        if test_module {
            n = body_end(&lines, n + 1).map_or(lines.len(), |end| end + 1);
            continue;
        }
        if let (Some(name), Some(end)) = (declared(line), body_end(&lines, n)) {
            found.push(Function {
                name: name.to_string(),
                line: n + 1,
                lines: end - n + 1,
            });
        }
        n += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("a source directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_product_function_is_longer_than_a_screen() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in PRODUCT_SOURCES {
            rust_files(&root.join(dir), &mut files);
        }
        let mut long = Vec::new();
        for file in &files {
            let src = std::fs::read_to_string(file).expect("a readable source");
            for f in functions(&src).into_iter().filter(|f| f.lines > MOST_LINES) {
                let shown = file.strip_prefix(&root).unwrap_or(file).display();
                long.push(format!("{shown}:{} {} ({} lines)", f.line, f.name, f.lines));
            }
        }
        assert!(
            files.len() > 20,
            "the product sources were not found: {files:?}"
        );
        assert!(
            long.is_empty(),
            "functions longer than {MOST_LINES} lines: split them into named steps:\n{}",
            long.join("\n")
        );
    }

    #[test]
    fn counts_code_braces_only() {
        let src = r##"
pub(crate) async fn outer(x: &str) -> Result<()> {
    let s = "}{ not a brace";
    let c = '{';
    let r = r#"}"#;
    // } a comment
    /* { */
    let l: &'static str = "x";
    Ok(())
}

fn declared_only();

#[cfg(test)]
mod tests {
    fn in_tests() {
    }
}

const fn after() -> u8 {
    1
}
"##;
        assert_eq!(
            functions(src),
            vec![
                Function {
                    name: "outer".into(),
                    line: 2,
                    lines: 9,
                },
                Function {
                    name: "after".into(),
                    line: 20,
                    lines: 3,
                },
            ]
        );
    }
}
